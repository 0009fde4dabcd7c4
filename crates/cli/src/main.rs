//! `gpuplane`: fragmentation-aware GPU placement for Kubernetes clusters that run inference beside
//! ordinary applications. Subcommands parse their arguments, call the library crates, and print.
#![forbid(unsafe_code)]

/// Writes to standard output and returns the `io::Result`: a closed pipe (`gpuplane … | head -1`) becomes an
/// error the subcommand returns, which `main` ends quietly, where `print!` would panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// [`out!`] with a newline.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod assess;
mod bench;
mod board;
mod cache;
mod extender;
mod input;
mod lint;
mod node;
mod posture;
mod scheduler;
mod serve_sim;
mod service;
mod sim;
mod trace;
mod webhook;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Fragmentation-aware GPU placement for shared Kubernetes GPU pools.
#[derive(Debug, Parser)]
#[command(name = "gpuplane", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replay a pod trace against a cluster with each placement policy and compare unallocated GPUs.
    Sim(sim::SimArgs),
    /// Arrival sequences for other simulators; openb-style trace variants.
    #[command(subcommand)]
    Trace(trace::TraceCommand),
    /// Simulate inference serving over time (TTFT, cold starts, origin bytes) per scheduling stack.
    ServeSim(serve_sim::ServeSimArgs),
    /// Schedule pods with schedulerName gpuplane in a live cluster (secondary scheduler).
    Scheduler(scheduler::SchedulerArgs),
    /// Serve the kube-scheduler extender (filter, prioritize, bind, preempt) for a live cluster.
    Extender(extender::ExtenderArgs),
    /// Serve the admission webhook (mutating and validating) over TLS for a live cluster.
    Webhook(webhook::WebhookArgs),
    /// Device plugin on a GPU node: hand each container exactly the GPUs the scheduler assigned.
    Node(node::NodeArgs),
    /// Node-local model cache: fetch a model, list a store, measure fetch throughput.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Assess platform-engineering maturity from repositories, manifests and a survey; plan the next level.
    Assess(assess::AssessArgs),
    /// Security posture of AI-assisted development: attribution, SARIF findings, cohort rates, CI gate.
    #[command(subcommand)]
    Posture(posture::PostureCommand),
    /// Check Kubernetes manifests against GPU workload rules; print a table or SARIF.
    Lint(lint::LintArgs),
    /// The board report: inference efficiency, platform maturity and AI-development security (up to 4 A4 pages).
    Board(board::BoardArgs),
    /// Measure a component under load on this machine.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// 128 + SIGPIPE (13): what a shell reports for a writer whose reader closed the pipe.
const SIGPIPE_STATUS: u8 = 141;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Sim(args) => sim::run(args),
        Command::ServeSim(args) => serve_sim::run_command(args),
        Command::Trace(command) => trace::run(command),
        Command::Assess(args) => assess::run(args),
        Command::Posture(command) => posture::run(command),
        Command::Lint(args) => lint::run(args),
        Command::Board(args) => board::run(args),
        Command::Bench(command) => bench::run(command),
        Command::Extender(args) => extender::run(args),
        Command::Scheduler(args) => scheduler::run(args),
        Command::Webhook(args) => webhook::run(args),
        Command::Cache(command) => cache::run(command),
        Command::Node(args) => node::run(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A failed gate or lint has already printed its findings: exit 1 without an error line.
            if err.downcast_ref::<posture::GateFailed>().is_some() {
                return ExitCode::FAILURE;
            }
            // The reader went away (`| head`): stop quietly with the status a process ended by SIGPIPE has.
            if err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::from(SIGPIPE_STATUS);
            }
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
