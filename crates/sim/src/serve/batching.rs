//! One replica's inference engine as vLLM V1 schedules it: continuous batching under a token budget per
//! step (`max_num_batched_tokens`) — every decoding sequence first, one token each, then prompts in arrival
//! order, chunked into what the decodes leave. A step lasts the longer of its compute (per token) and its
//! memory traffic (the weights, plus the KV cache the decoding sequences attend to).
//!
//! A step's batch is fixed when it starts: a request admitted mid-step joins at the next step. Steps with
//! the same batch are taken as one run, so time moves from one change of the batch to the next rather than
//! one step at a time; [`Batcher`] equals the step-by-step schedule (a property test checks it).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Slack when comparing a run's end with the clock, seconds (the event queue counts microseconds).
const CLOCK_SLACK_S: f64 = 1e-6;

/// What one step costs on a replica.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepCost {
    /// Compute seconds per token in the step (a prompt token or a decode).
    pub per_token_s: f64,
    /// Seconds to read the weights, which every step does once.
    pub weights_s: f64,
    /// Seconds to read one token of KV cache, which every decoding sequence does for its whole context.
    pub kv_per_token_s: f64,
}

impl StepCost {
    /// Seconds of a step of `tokens` tokens whose decoding sequences attend to `context` tokens.
    pub fn step_s(&self, tokens: u64, context: f64) -> f64 {
        (tokens as f64 * self.per_token_s).max(self.weights_s + context * self.kv_per_token_s)
    }
}

/// What the engine reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Output {
    /// The request's prompt is processed and its first token is out.
    FirstToken {
        /// The request.
        id: u32,
        /// When, seconds.
        at_s: f64,
    },
    /// The request's last token is out; its KV cache is free.
    Finished {
        /// The request.
        id: u32,
        /// When, seconds.
        at_s: f64,
    },
}

/// A prompt waiting for (the rest of) its prefill.
#[derive(Debug, Clone, Copy)]
struct Prompt {
    id: u32,
    left: u64,
    prompt: u64,
    output: u64,
}

/// A decoding sequence, ordered by the step count at which its last token comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Decoding {
    last_step: u64,
    id: u32,
    /// Its context less the step count: its context is this plus the step count.
    context_base: i64,
}

/// Steps with one batch, from `start_s`, each `step_s` long.
#[derive(Debug, Clone, PartialEq)]
struct Run {
    start_s: f64,
    step_s: f64,
    steps: u64,
    /// Prompt tokens each step takes from each prompt, in order.
    chunks: Vec<(u32, u64)>,
}

impl Run {
    fn end_s(&self) -> f64 {
        self.start_s + self.steps as f64 * self.step_s
    }
}

/// One replica's engine.
#[derive(Debug, Clone)]
pub struct Batcher {
    budget: u64,
    cost: StepCost,
    /// Steps taken so far: every decoding sequence gains a token each step.
    steps: u64,
    prompts: VecDeque<Prompt>,
    prompt_tokens: u64,
    decoding: BinaryHeap<Reverse<Decoding>>,
    /// Sum of the decoding sequences' `context_base`; their context is this plus count × steps.
    context_base: i64,
    run: Option<Run>,
}

impl Batcher {
    /// An idle engine with a budget of `max_num_batched_tokens` per step (at least 1).
    pub fn new(max_num_batched_tokens: u32, cost: StepCost) -> Self {
        Batcher {
            budget: u64::from(max_num_batched_tokens.max(1)),
            cost,
            steps: 0,
            prompts: VecDeque::new(),
            prompt_tokens: 0,
            decoding: BinaryHeap::new(),
            context_base: 0,
            run: None,
        }
    }

    /// When the current run ends (outputs may come then), if the engine is busy.
    pub fn next_change_s(&self) -> Option<f64> {
        self.run.as_ref().map(Run::end_s)
    }

    /// Prompt tokens still to prefill: the work ahead of a new request.
    pub fn queued_prompt_tokens(&self) -> u64 {
        self.prompt_tokens
    }

    /// Takes every run that has ended by `now_s`, reporting what came out of each.
    pub fn advance(&mut self, now_s: f64, out: &mut Vec<Output>) {
        while let Some(run) = self.run.take() {
            let end = run.end_s();
            if end > now_s + CLOCK_SLACK_S {
                self.run = Some(run);
                return;
            }
            self.take_steps(&run, run.steps);
            self.emit(end, out);
            self.run = self.plan(end);
        }
    }

    /// A new request: its prompt joins the batch at the next step (or at this one, if it starts now).
    pub fn admit(&mut self, now_s: f64, id: u32, prompt: u32, output: u32, out: &mut Vec<Output>) {
        self.advance(now_s, out);
        let replan = self.cut(now_s);
        // An engine needs at least one prompt token to produce a first token.
        let prompt = u64::from(prompt.max(1));
        self.prompts.push_back(Prompt { id, left: prompt, prompt, output: u64::from(output) });
        self.prompt_tokens += prompt;
        if let Some(at) = replan {
            self.run = self.plan(at);
        }
    }

    /// The client of request `id` gave up: if its prompt is still waiting for its first token, it is
    /// dropped (true); one already answered is left to finish (false). Work done on it is lost.
    pub fn abort(&mut self, now_s: f64, id: u32, out: &mut Vec<Output>) -> bool {
        self.advance(now_s, out);
        let Some(at) = self.prompts.iter().position(|p| p.id == id) else { return false };
        let replan = self.cut(now_s);
        if let Some(p) = self.prompts.remove(at) {
            self.prompt_tokens -= p.left;
        }
        if let Some(at) = replan {
            self.run = self.plan(at);
        }
        true
    }

    /// Ends the current run with the step in progress at `now_s`, so that a change of the batch takes
    /// effect at the next step; the steps before it produce nothing (a run's outputs come at its end).
    /// Returns when to plan the next batch if no step is under way: now when idle, or the start of a step
    /// that begins at this instant (the change joins it).
    fn cut(&mut self, now_s: f64) -> Option<f64> {
        let Some(mut run) = self.run.take() else { return Some(now_s) };
        let done = (((now_s - run.start_s) / run.step_s).floor().max(0.0) as u64).min(run.steps - 1);
        self.take_steps(&run, done);
        run.start_s += done as f64 * run.step_s;
        run.steps = 1;
        if run.start_s + CLOCK_SLACK_S >= now_s {
            return Some(run.start_s);
        }
        self.run = Some(run);
        None
    }

    /// Applies `n` steps of `run`'s batch.
    fn take_steps(&mut self, run: &Run, n: u64) {
        self.steps += n;
        for &(id, chunk) in &run.chunks {
            // A prompt aborted during the run is gone; its chunks were computed for nothing.
            if let Some(p) = self.prompts.iter_mut().find(|p| p.id == id) {
                let taken = (chunk * n).min(p.left);
                p.left -= taken;
                self.prompt_tokens -= taken;
            }
        }
    }

    /// Reports first tokens (prompts done) and finished sequences at `at_s`.
    fn emit(&mut self, at_s: f64, out: &mut Vec<Output>) {
        while let Some(&Reverse(d)) = self.decoding.peek()
            && d.last_step <= self.steps
        {
            self.decoding.pop();
            self.context_base -= d.context_base;
            out.push(Output::Finished { id: d.id, at_s });
        }
        while let Some(p) = self.prompts.front().copied()
            && p.left == 0
        {
            self.prompts.pop_front();
            out.push(Output::FirstToken { id: p.id, at_s });
            // The step that finished the prompt produced the first token; one more per step follows.
            if p.output <= 1 {
                out.push(Output::Finished { id: p.id, at_s });
            } else {
                // Its context is the prompt and the first token now, one more token per step from here.
                let context_base = p.prompt as i64 + 1 - self.steps as i64;
                let d = Decoding { last_step: self.steps + p.output - 1, id: p.id, context_base };
                self.context_base += context_base;
                self.decoding.push(Reverse(d));
            }
        }
    }

    /// Context tokens the decoding sequences attend to now.
    fn context(&self) -> u64 {
        (self.context_base + self.decoding.len() as i64 * self.steps as i64).max(0) as u64
    }

    /// The next run from `start_s`: the batch the scheduler forms, repeated while nothing would change it.
    fn plan(&self, start_s: f64) -> Option<Run> {
        let decodes = self.decoding.len() as u64;
        if decodes == 0 && self.prompts.is_empty() {
            return None;
        }
        let room = self.budget.saturating_sub(decodes);
        let mut chunks = Vec::new();
        let mut left = room;
        for p in &self.prompts {
            if left == 0 {
                break;
            }
            let take = p.left.min(left);
            chunks.push((p.id, take));
            left -= take;
        }
        // Identical steps last until the first decode finishes, or until the step before the head prompt's
        // last chunk (that step gives its leftover budget to the next prompt, so it differs).
        let until_decode = self.decoding.peek().map_or(u64::MAX, |Reverse(d)| d.last_step - self.steps);
        let until_prompt = match (self.prompts.front(), chunks.first()) {
            (Some(head), Some(&(_, chunk))) if chunks.len() == 1 && head.left > chunk => {
                (head.left.div_ceil(chunk) - 1).max(1)
            }
            (Some(_), Some(_)) => 1,
            // No room for prompts: only a finishing decode changes the batch.
            _ => u64::MAX,
        };
        let steps = until_decode.min(until_prompt).max(1);
        let tokens = decodes + (room - left);
        // The context grows by one token per decoding sequence per step: the run's mean step (exact while
        // the steps stay memory-bound or compute-bound; the memory term is linear in the context).
        let context = self.context() as f64 + (decodes * (steps - 1)) as f64 / 2.0;
        Some(Run { start_s, step_s: self.cost.step_s(tokens, context), steps, chunks })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    const COMPUTE: StepCost = StepCost { per_token_s: 1e-3, weights_s: 0.01, kv_per_token_s: 0.0 };

    /// Runs arrivals `(at, prompt, output)` through a batcher the way the simulation drives it; returns
    /// per request its first-token and finish times.
    fn drive(budget: u32, cost: StepCost, arrivals: &[(f64, u32, u32)]) -> Vec<(f64, f64)> {
        let mut b = Batcher::new(budget, cost);
        let mut out = Vec::new();
        for (id, &(at, prompt, output)) in arrivals.iter().enumerate() {
            b.admit(at, id as u32, prompt, output, &mut out);
        }
        b.advance(f64::INFINITY, &mut out);
        assert!(b.next_change_s().is_none());
        collect(arrivals.len(), &out)
    }

    fn collect(n: usize, out: &[Output]) -> Vec<(f64, f64)> {
        let mut times = vec![(f64::NAN, f64::NAN); n];
        for o in out {
            match *o {
                Output::FirstToken { id, at_s } => times[id as usize].0 = at_s,
                Output::Finished { id, at_s } => times[id as usize].1 = at_s,
            }
        }
        times
    }

    /// The schedule taken one step at a time: at each step boundary, every decoding sequence takes a token
    /// and prompts fill what is left of the budget in arrival order; a request arriving during a step joins
    /// at the next boundary, one arriving at a boundary joins there.
    fn stepwise(budget: u32, cost: StepCost, arrivals: &[(f64, u32, u32)]) -> Vec<(f64, f64)> {
        let budget = u64::from(budget);
        let mut times = vec![(f64::NAN, f64::NAN); arrivals.len()];
        // (id, prompt tokens left, prompt, output) and (id, tokens still to generate, context).
        let mut prompts: VecDeque<(usize, u64, u64, u64)> = VecDeque::new();
        let mut decoding: Vec<(usize, u64, u64)> = Vec::new();
        let mut next = 0;
        let mut t = 0.0_f64;
        loop {
            while next < arrivals.len() && arrivals[next].0 <= t + CLOCK_SLACK_S {
                let (_, p, o) = arrivals[next];
                let p = u64::from(p.max(1));
                prompts.push_back((next, p, p, u64::from(o)));
                next += 1;
            }
            if prompts.is_empty() && decoding.is_empty() {
                let Some(&(at, _, _)) = arrivals.get(next) else { return times };
                t = t.max(at);
                continue;
            }
            let mut room = budget.saturating_sub(decoding.len() as u64);
            let mut chunks = Vec::new();
            for (i, p) in prompts.iter().enumerate() {
                if room == 0 {
                    break;
                }
                let take = p.1.min(room);
                chunks.push((i, take));
                room -= take;
            }
            let tokens = decoding.len() as u64 + chunks.iter().map(|c| c.1).sum::<u64>();
            let context = decoding.iter().map(|d| d.2).sum::<u64>() as f64;
            t += cost.step_s(tokens, context);
            decoding.retain_mut(|d| {
                d.1 -= 1;
                d.2 += 1;
                if d.1 == 0 {
                    times[d.0].1 = t;
                }
                d.1 > 0
            });
            for (i, take) in chunks {
                prompts[i].1 -= take;
            }
            while let Some(&(id, 0, prompt, output)) = prompts.front() {
                prompts.pop_front();
                times[id].0 = t;
                if output <= 1 {
                    times[id].1 = t;
                } else {
                    decoding.push((id, output - 1, prompt + 1));
                }
            }
        }
    }

    #[test]
    fn a_long_prompt_is_prefilled_in_budget_sized_chunks() {
        let t = drive(2048, COMPUTE, &[(0.0, 5000, 1)]);
        // 2048 + 2048 + 904 tokens at 1 ms each; the first token ends the request.
        assert!((t[0].0 - 5.0).abs() < 1e-9, "{t:?}");
        assert_eq!(t[0].0, t[0].1);
    }

    #[test]
    fn short_prompts_share_a_step_and_decodes_ride_along_a_long_prefill() {
        // Two 100-token prompts fit one 2048 budget: both first tokens after one 200-token step.
        let t = drive(2048, COMPUTE, &[(0.0, 100, 1), (0.0, 100, 1)]);
        assert_eq!(t[0].0, t[1].0);
        assert!((t[0].0 - 0.2).abs() < 1e-9, "{t:?}");
        // A sequence decoding 10 tokens while a 20,000-token prompt arrives: its steps become prefill-sized
        // (2048 tokens, 2.048 s), and the prompt gets 2047 tokens of each.
        let t = drive(2048, COMPUTE, &[(0.0, 10, 11), (0.005, 20_000, 1)]);
        let first = 0.01; // its 10-token prompt, memory-bound
        assert!((t[0].0 - first).abs() < 1e-9, "{t:?}");
        assert!(t[0].1 > first + 10.0 * 2.0, "ten decode steps shared with prefill chunks: {t:?}");
        assert!(t[1].0 > 20_000.0 * 1e-3, "{t:?}");
    }

    #[test]
    fn a_request_admitted_mid_step_joins_at_the_next_step() {
        // A 1000-token prompt runs from 0 to 1 s; one arriving at 0.5 s starts at 1 s and ends at 1.1 s.
        let t = drive(2048, COMPUTE, &[(0.0, 1000, 1), (0.5, 100, 1)]);
        assert!((t[1].0 - 1.1).abs() < 1e-9, "{t:?}");
    }

    #[test]
    fn decoding_reads_the_kv_cache_of_every_sequence() {
        let memory = StepCost { per_token_s: 1e-6, weights_s: 0.01, kv_per_token_s: 1e-6 };
        let short = drive(2048, memory, &[(0.0, 10, 100)]);
        let long = drive(2048, memory, &[(0.0, 10_000, 100)]);
        let decode = |t: &[(f64, f64)]| t[0].1 - t[0].0;
        // 99 steps of 10 ms plus 10,000 context tokens read at 1 µs each: about 19.9 ms a step.
        assert!((decode(&short) - 99.0 * 0.01).abs() < 0.01, "{short:?}");
        assert!((decode(&long) - 99.0 * (0.01 + 0.01005)).abs() < 0.01, "{long:?}");
    }

    #[test]
    fn an_aborted_prompt_leaves_and_an_answered_one_stays() {
        let mut b = Batcher::new(2048, COMPUTE);
        let mut out = Vec::new();
        b.admit(0.0, 0, 10_000, 5, &mut out);
        b.admit(0.0, 1, 100, 50, &mut out);
        assert_eq!(b.queued_prompt_tokens(), 10_100);
        assert!(b.abort(3.0, 0, &mut out), "still prefilling at 3 s");
        // The step in progress at 3 s (2048 tokens of request 0) completes; request 1 is next.
        b.advance(f64::INFINITY, &mut out);
        let t = collect(2, &out);
        assert!(t[0].0.is_nan(), "no first token for an aborted request: {t:?}");
        assert!((t[1].0 - (4.096 + 0.1)).abs() < 1e-9, "{t:?}");
        assert!(!b.abort(100.0, 1, &mut out), "already answered");
        assert_eq!(b.queued_prompt_tokens(), 0);
    }

    fn arrivals() -> impl Strategy<Value = Vec<(f64, u32, u32)>> {
        // Half the arrival times on a coarse grid, so that requests also arrive together.
        let at = prop_oneof![0.0..60.0_f64, (0..30_u32).prop_map(|k| f64::from(k) * 2.0)];
        prop::collection::vec((at, 1..12_000_u32, 1..400_u32), 1..30).prop_map(|mut v| {
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            v
        })
    }

    proptest! {
        #[test]
        fn runs_of_steps_equal_the_step_by_step_schedule(
            budget in 1..4096_u32,
            per_token_s in 1e-5..1e-3_f64,
            weights_s in 1e-3..5e-2_f64,
            arrivals in arrivals(),
        ) {
            let cost = StepCost { per_token_s, weights_s, kv_per_token_s: 0.0 };
            let fast = drive(budget, cost, &arrivals);
            let slow = stepwise(budget, cost, &arrivals);
            for (id, (f, s)) in fast.iter().zip(&slow).enumerate() {
                let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(1.0);
                prop_assert!(close(f.0, s.0) && close(f.1, s.1), "request {id}: {f:?} vs step by step {s:?}");
            }
        }
    }
}
