//! `gpuplane serve-sim`: inference serving over an hour of a public LLM trace on the openb cluster with
//! openb batch load, one run per scheduling stack; prints the table and writes JSON and SVG charts.
//! `--sensitivity` repeats the runs with load bandwidths and startup costs at ±50 %.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use gpuplane_core::openb::read_pods;
use gpuplane_report::serve;
use gpuplane_report::table::Style;
use gpuplane_sim::serve::{LlmRequest, ServeConfig, ServeResult, Setup, read_azure, read_mooncake, run, scaled_costs};

use crate::input;

const CONV: &str = include_str!("../../../data/azure-llm-2023/AzureLLMInferenceTrace_conv.csv");
const CODE: &str = include_str!("../../../data/azure-llm-2023/AzureLLMInferenceTrace_code.csv");
const DEFAULT_CONFIG: &str = "data/serve/default.yaml";

/// Arguments of `gpuplane serve-sim`.
#[derive(Debug, Args)]
pub struct ServeSimArgs {
    /// Requests: `conv` or `code` (the bundled Azure LLM inference traces 2023), an Azure-format CSV, or a
    /// Mooncake JSONL file (such as data/mooncake/conversation_trace.jsonl)
    #[arg(long, default_value = "conv", value_name = "conv|code|FILE")]
    trace: String,
    /// Configuration YAML; fields left out keep their defaults [default: the values of data/serve/default.yaml]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Batch load: openb pod CSV with creation and deletion times [default: bundled openb default trace]
    #[arg(long, value_name = "FILE")]
    batch: Option<PathBuf>,
    /// Cluster: openb node CSV or Kubernetes Node YAML [default: bundled openb GPU nodes]
    #[arg(long, value_name = "FILE")]
    nodes: Option<PathBuf>,
    /// Seed of the model-popularity draw and the batch steady state
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Also run these seeds (a list and/or ranges, such as 42-51) and print each stack's interactive SLO
    /// attainment, p99 and allocation per seed, with the median and the range
    #[arg(long, value_name = "LIST")]
    seeds: Option<String>,
    /// Requests per request of the trace (the trace superposed on itself with seeded offsets); overrides
    /// the configuration's request_rate_scale. 1 is the trace's native rate
    #[arg(long, value_name = "FACTOR")]
    rate_scale: Option<f64>,
    /// Also run with load bandwidths and startup costs at 50 % and 150 % and print whether the ranking holds
    #[arg(long)]
    sensitivity: bool,
    /// Folder for serve.json and the SVG charts
    #[arg(long, default_value = "out/serve", value_name = "DIR")]
    out: PathBuf,
    /// What to print on standard output
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    format: OutputFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OutputFormat {
    /// A terminal table.
    Table,
    /// Markdown tables.
    Markdown,
    /// The JSON document (as written to serve.json).
    Json,
}

pub(crate) fn requests(trace: &str) -> Result<(String, Vec<LlmRequest>)> {
    let (name, parsed) = match trace {
        "conv" => {
            ("data/azure-llm-2023/AzureLLMInferenceTrace_conv.csv".to_owned(), read_azure("conv", CONV.as_bytes()))
        }
        "code" => {
            ("data/azure-llm-2023/AzureLLMInferenceTrace_code.csv".to_owned(), read_azure("code", CODE.as_bytes()))
        }
        path => {
            let file = std::fs::File::open(path).with_context(|| format!("cannot read {path}"))?;
            let parsed = match Path::new(path).extension().and_then(|e| e.to_str()) {
                Some("csv") => read_azure(path, file),
                Some("jsonl") => read_mooncake(path, file),
                _ => bail!("{path}: unknown trace type; expected conv, code, an Azure .csv or a Mooncake .jsonl"),
            };
            (path.to_owned(), parsed)
        }
    };
    Ok((name, parsed?))
}

/// Runs `gpuplane serve-sim`.
pub fn run_command(args: ServeSimArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            ServeConfig::from_yaml(&path.display().to_string(), &text)?
        }
        None => ServeConfig::default(),
    };
    if let Some(scale) = args.rate_scale {
        config.request_rate_scale = scale;
        config.validate().context("--rate-scale")?;
    }
    let (trace_name, requests) = requests(&args.trace)?;
    let (nodes_name, nodes) = input::nodes(args.nodes.as_deref())?;
    let (batch_name, batch) = match &args.batch {
        Some(path) => {
            let name = path.display().to_string();
            let file = std::fs::File::open(path).with_context(|| format!("cannot read {name}"))?;
            let pods = read_pods(&name, file)?;
            (name, pods)
        }
        None => (
            input::BUNDLED_TRACE_NAME.to_owned(),
            read_pods(input::BUNDLED_TRACE_NAME, input::BUNDLED_TRACE.as_bytes())?,
        ),
    };
    let seeds = args.seeds.as_deref().map(crate::sim::parse_seeds).transpose()?.unwrap_or_default();
    let mut varied: Vec<(String, ServeConfig)> = Vec::new();
    if args.sensitivity {
        for (name, bandwidth, startup) in [
            ("bandwidths 50 %", 0.5, 1.0),
            ("bandwidths 150 %", 1.5, 1.0),
            ("startup costs 50 %", 1.0, 0.5),
            ("startup costs 150 %", 1.0, 1.5),
        ] {
            varied.push((name.to_owned(), scaled_costs(&config, bandwidth, startup)));
        }
        // The origin's rate per reader, from one stream (0.3 GB/s at the defaults) to twice the configured.
        let configured = config.bandwidth_gbps.origin;
        for factor in [0.2, 0.5, 2.0] {
            let mut c = config.clone();
            c.bandwidth_gbps.origin = configured * factor;
            varied.push((format!("origin {:.2} GB/s per reader", configured * factor), c));
        }
    }
    let setup = Setup { config, nodes, batch, requests };
    let runs = 1 + seeds.iter().filter(|&&s| s != args.seed).count() + varied.len();
    let bar = crate::sim::progress_bar(runs as u64, "serving runs");
    // Without a terminal the bar is hidden: one line per run says where the command is instead.
    let plain = !std::io::stderr().is_terminal();
    let done = std::cell::Cell::new(0);
    let run_one = |setup: &Setup, seed: u64, what: &str| {
        bar.set_message(format!("{what}, seed {seed}"));
        let result = run(setup, seed);
        bar.inc(1);
        done.set(done.get() + 1);
        if plain {
            eprintln!("serve-sim: run {}/{runs} done ({what}, seed {seed})", done.get());
        }
        result
    };
    let result = run_one(&setup, args.seed, "as configured")?;
    let mut per_seed: Vec<ServeResult> = Vec::new();
    for &seed in &seeds {
        per_seed.push(if seed == args.seed { result.clone() } else { run_one(&setup, seed, "as configured")? });
    }
    let mut variants: Vec<(String, ServeResult)> = Vec::new();
    if args.sensitivity {
        variants.push(("as configured".to_owned(), result.clone()));
        for (name, config) in varied {
            let r = run_one(&Setup { config, ..setup.clone() }, args.seed, &name)?;
            variants.push((name, r));
        }
    }
    bar.finish_and_clear();

    let json = serde_json::json!({
        "schema": serve::SERVE_JSON_SCHEMA,
        "trace": trace_name,
        "batch": batch_name,
        "nodes": nodes_name,
        "config": setup.config,
        "config_source": args.config.as_ref().map_or(DEFAULT_CONFIG.to_owned(), |p| p.display().to_string()),
        "result": result,
        "seeds": per_seed,
        "median": (!per_seed.is_empty()).then(|| serve::medians(&per_seed)),
        "sensitivity": variants.iter().map(|(name, r)| serde_json::json!({"costs": name, "result": r})).collect::<Vec<_>>(),
    });
    write_outputs(&args.out, &result, &json)?;
    let header = format!(
        "{trace_name}: {} requests in {:.0} s; batch load from {batch_name} ({} pods, openb's creation gaps shortened {:.0}×); seed {}\n",
        result.requests, setup.config.horizon_s, result.batch_pods, result.batch_time_compression, result.seed
    );
    match args.format {
        OutputFormat::Table | OutputFormat::Markdown => {
            let style = if matches!(args.format, OutputFormat::Table) { Style::Terminal } else { Style::Markdown };
            out!("{header}{}", serve::table(&result, style))?;
            if !per_seed.is_empty() {
                out!("Per seed:\n{}", serve::seeds_table(&per_seed, style))?;
            }
            if !variants.is_empty() {
                out!("Interactive SLO attainment when costs change:\n{}", serve::sensitivity_table(&variants, style))?;
            }
            let wall: f64 = result.stacks.iter().map(|s| s.wall_s).sum();
            outln!("CPU time {wall:.1} s for {} stacks; wrote {}", result.stacks.len(), args.out.display())?;
        }
        OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(&json)?)?,
    }
    Ok(())
}

fn write_outputs(dir: &Path, result: &ServeResult, json: &serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |name: &str, body: String| {
        let path = dir.join(name);
        std::fs::write(&path, body).with_context(|| format!("cannot write {}", path.display()))
    };
    write("serve.json", serde_json::to_string_pretty(json)? + "\n")?;
    write("allocation.svg", serve::allocation_chart(result).render(900.0, 480.0))?;
    write("fragmentation.svg", serve::fragmentation_chart(result).render(900.0, 480.0))?;
    write("pending.svg", serve::pending_chart(result).render(900.0, 480.0))?;
    Ok(())
}
