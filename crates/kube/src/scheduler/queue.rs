//! The scheduling queue: pending pods ordered by priority, then arrival. A pod that did not fit waits
//! in backoff (1 s doubling to 10 s, kube-scheduler's defaults) and is retried only after the cluster
//! changed in a way that may free room, or after `max_unschedulable_wait` at the latest.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

/// Backoff and retry settings.
#[derive(Debug, Clone, Copy)]
pub struct QueueConfig {
    /// Backoff after the first failed attempt.
    pub initial_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// How long an unschedulable pod waits for a cluster change before it is retried anyway.
    pub max_unschedulable_wait: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            max_unschedulable_wait: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Ready {
    priority: i32,
    arrival: u64,
    key: String,
}

impl Ord for Ready {
    fn cmp(&self, other: &Self) -> Ordering {
        // Max-heap: higher priority first, then earlier arrival.
        self.priority.cmp(&other.priority).then(other.arrival.cmp(&self.arrival))
    }
}

impl PartialOrd for Ready {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Clone)]
enum Where {
    /// In the heap.
    Ready,
    /// Failed `attempts` times; may run again from `not_before`, once the cluster changed (or the
    /// longest wait passed).
    Waiting { not_before: Instant, since: Instant, changed: bool },
}

#[derive(Debug, Clone)]
struct Entry {
    priority: i32,
    arrival: u64,
    attempts: u32,
    place: Where,
}

/// A pod taken from the queue for an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// `namespace/name`.
    pub key: String,
    /// Its priority.
    pub priority: i32,
    /// Failed attempts before this one.
    pub attempts: u32,
}

/// Pending pods by `namespace/name`.
#[derive(Debug, Default)]
pub struct SchedulingQueue {
    config: QueueConfig,
    heap: BinaryHeap<Ready>,
    entries: HashMap<String, Entry>,
    next_arrival: u64,
}

impl SchedulingQueue {
    /// An empty queue.
    pub fn new(config: QueueConfig) -> Self {
        SchedulingQueue { config, ..Default::default() }
    }

    /// Adds a pending pod, or updates its priority; a pod already waiting keeps waiting.
    pub fn add(&mut self, key: &str, priority: i32) {
        if let Some(e) = self.entries.get_mut(key) {
            if e.priority != priority {
                e.priority = priority;
                if matches!(e.place, Where::Ready) {
                    self.heap.push(Ready { priority, arrival: e.arrival, key: key.to_owned() });
                }
            }
            return;
        }
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        self.entries.insert(key.to_owned(), Entry { priority, arrival, attempts: 0, place: Where::Ready });
        self.heap.push(Ready { priority, arrival, key: key.to_owned() });
    }

    /// Removes a pod (bound, deleted, or no longer ours).
    pub fn remove(&mut self, key: &str) -> bool {
        // Its heap entry goes stale and is skipped when popped.
        self.entries.remove(key).is_some()
    }

    /// Whether the pod is queued (ready or waiting).
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Pods queued, ready or waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no pod is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many pods are ready now (waiting pods whose time has come are moved to ready first).
    pub fn ready(&mut self, now: Instant) -> usize {
        self.promote(now);
        self.entries.values().filter(|e| matches!(e.place, Where::Ready)).count()
    }

    /// The highest-priority ready pod, taken out of the queue; waiting pods whose time has come are
    /// moved to ready first.
    pub fn pop(&mut self, now: Instant) -> Option<Queued> {
        self.promote(now);
        while let Some(top) = self.heap.pop() {
            let live = self.entries.get(&top.key).is_some_and(|e| {
                matches!(e.place, Where::Ready) && e.priority == top.priority && e.arrival == top.arrival
            });
            if let (true, Some(e)) = (live, self.entries.remove(&top.key)) {
                return Some(Queued { key: top.key, priority: e.priority, attempts: e.attempts });
            }
        }
        None
    }

    /// Puts back a pod that could not be placed now: it waits out its backoff and a cluster change.
    pub fn requeue_unschedulable(&mut self, pod: Queued, now: Instant) {
        self.requeue(pod, now, false);
    }

    /// Puts back a pod whose attempt failed for a reason other than room (a failed bind): it runs
    /// again after its backoff, whether or not the cluster changed.
    pub fn requeue_after_error(&mut self, pod: Queued, now: Instant) {
        self.requeue(pod, now, true);
    }

    fn requeue(&mut self, pod: Queued, now: Instant, changed: bool) {
        let attempts = pod.attempts.saturating_add(1);
        let not_before = now + self.backoff(attempts);
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        let place = Where::Waiting { not_before, since: now, changed };
        self.entries.insert(pod.key, Entry { priority: pod.priority, arrival, attempts, place });
    }

    /// The cluster changed (a pod left, a node was added or changed): every waiting pod becomes
    /// eligible once its backoff is over.
    pub fn cluster_changed(&mut self) {
        for e in self.entries.values_mut() {
            if let Where::Waiting { changed, .. } = &mut e.place {
                *changed = true;
            }
        }
    }

    /// The earliest instant a waiting pod may become ready (for the caller's timer).
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|e| match e.place {
                Where::Ready => None,
                Where::Waiting { not_before, since, changed } => {
                    Some(if changed { not_before } else { not_before.max(since + self.config.max_unschedulable_wait) })
                }
            })
            .min()
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u32.checked_shl(attempts.saturating_sub(1).min(16)).unwrap_or(u32::MAX);
        self.config.initial_backoff.saturating_mul(factor).min(self.config.max_backoff)
    }

    fn promote(&mut self, now: Instant) {
        let wait = self.config.max_unschedulable_wait;
        for (key, e) in &mut self.entries {
            if let Where::Waiting { not_before, since, changed } = e.place
                && now >= not_before
                && (changed || now >= since + wait)
            {
                e.place = Where::Ready;
                self.heap.push(Ready { priority: e.priority, arrival: e.arrival, key: key.clone() });
            }
        }
    }

    /// Failed attempts of a queued pod so far.
    pub fn attempts_of(&self, key: &str) -> u32 {
        self.entries.get(key).map_or(0, |e| e.attempts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_priority_first_then_arrival() {
        let mut q = SchedulingQueue::new(QueueConfig::default());
        let now = Instant::now();
        q.add("ns/batch-1", 1000);
        q.add("ns/chat-1", 100_000);
        q.add("ns/batch-2", 1000);
        q.add("ns/chat-2", 100_000);
        let order: Vec<String> = std::iter::from_fn(|| q.pop(now).map(|p| p.key)).collect();
        assert_eq!(order, ["ns/chat-1", "ns/chat-2", "ns/batch-1", "ns/batch-2"]);
        assert!(q.is_empty());
    }

    #[test]
    fn removed_and_reprioritised_pods_are_not_popped_twice() {
        let mut q = SchedulingQueue::new(QueueConfig::default());
        let now = Instant::now();
        q.add("a", 1);
        q.add("b", 2);
        q.add("a", 5);
        q.remove("b");
        assert_eq!(q.pop(now), Some(Queued { key: "a".to_owned(), priority: 5, attempts: 0 }));
        assert_eq!(q.pop(now), None);
    }

    #[test]
    fn an_unschedulable_pod_waits_for_backoff_and_a_cluster_change() {
        let config = QueueConfig::default();
        let mut q = SchedulingQueue::new(config);
        let t0 = Instant::now();
        q.add("a", 0);
        let popped = q.pop(t0).unwrap();
        q.requeue_unschedulable(popped, t0);
        assert_eq!(q.pop(t0 + Duration::from_secs(5)), None, "no cluster change yet");
        q.cluster_changed();
        assert_eq!(q.pop(t0 + Duration::from_millis(500)), None, "still in backoff");
        assert_eq!(q.next_wakeup(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(q.pop(t0 + Duration::from_secs(1)).map(|p| p.key), Some("a".to_owned()));
    }

    #[test]
    fn backoff_doubles_up_to_the_limit_and_long_waits_retry_anyway() {
        let config = QueueConfig::default();
        let mut q = SchedulingQueue::new(config);
        let t0 = Instant::now();
        let queued = |key: &str, attempts| Queued { key: key.to_owned(), priority: 0, attempts };
        q.requeue_unschedulable(queued("a", 4), t0);
        assert_eq!(q.attempts_of("a"), 5);
        q.cluster_changed();
        assert_eq!(q.next_wakeup(), Some(t0 + Duration::from_secs(10)));
        q.requeue_unschedulable(queued("b", 1), t0);
        // b: backoff 2 s, no change for b after its requeue, so it waits the longest wait.
        assert_eq!(q.pop(t0 + Duration::from_secs(30)).map(|p| p.key), Some("a".to_owned()));
        assert_eq!(q.pop(t0 + Duration::from_secs(30)), None);
        assert_eq!(q.pop(t0 + config.max_unschedulable_wait).map(|p| p.key), Some("b".to_owned()));
    }

    #[test]
    fn a_failed_bind_retries_after_backoff_without_a_change() {
        let mut q = SchedulingQueue::new(QueueConfig::default());
        let t0 = Instant::now();
        q.requeue_after_error(Queued { key: "a".to_owned(), priority: 0, attempts: 0 }, t0);
        assert_eq!(q.pop(t0), None);
        assert_eq!(q.pop(t0 + Duration::from_secs(1)).map(|p| p.key), Some("a".to_owned()));
    }
}
