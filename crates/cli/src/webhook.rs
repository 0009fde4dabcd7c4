//! `gpuplane webhook`: the admission webhook over TLS (see docs/webhook.md).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use gpuplane_kube::serve::{WebhookServeConfig, serve_webhook, shutdown_signal};
use gpuplane_kube::webhook::WebhookConfig;

use crate::service;

/// Arguments of `gpuplane webhook`.
#[derive(Debug, Args)]
pub struct WebhookArgs {
    /// Address to serve POST /mutate, POST /validate and GET /healthz on (HTTPS)
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// PEM certificate chain; read again when the file changes
    #[arg(long, default_value = "/etc/gpuplane/tls/tls.crt")]
    tls_cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1); read again when the file changes
    #[arg(long, default_value = "/etc/gpuplane/tls/tls.key")]
    tls_key: PathBuf,
    /// Largest AdmissionReview accepted, in bytes; larger ones get 413
    #[arg(long, default_value_t = 8 << 20)]
    max_body_bytes: usize,
    /// Node selector given to GPU pods, as key=value (repeatable)
    #[arg(long = "pool-selector", value_name = "KEY=VALUE", default_value = "gpuplane.io/pool=gpu")]
    pool_selector: Vec<String>,
    /// Taint key of the GPU pool nodes; GPU pods get a toleration for it
    #[arg(long, default_value = "nvidia.com/gpu")]
    pool_taint_key: String,
    /// schedulerName given to GPU pods that use the default scheduler
    #[arg(long, default_value = "gpuplane")]
    scheduler_name: String,
    /// Pod label naming the latency class
    #[arg(long, default_value = "gpuplane.io/latency-class")]
    latency_label: String,
    /// Priority class per latency class, as class=priorityClassName:value (repeatable)
    #[arg(
        long = "priority-class",
        value_name = "CLASS=NAME:VALUE",
        default_values = ["interactive=gpuplane-interactive:100000", "batch=gpuplane-batch:1000"]
    )]
    priority_classes: Vec<String>,
    /// Admit pods without GPUs that set NVIDIA_VISIBLE_DEVICES=all (denied by default)
    #[arg(long)]
    allow_visible_devices_all: bool,
    /// Log format on standard error: text or json (level from RUST_LOG, default info)
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn pair(flag: &str, value: &str, form: &str) -> Result<(String, String)> {
    match value.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => bail!("{flag} {value:?}: expected {form}"),
    }
}

fn webhook_config(args: &WebhookArgs) -> Result<WebhookConfig> {
    let pool_selector: BTreeMap<String, String> =
        args.pool_selector.iter().map(|s| pair("--pool-selector", s, "KEY=VALUE")).collect::<Result<_>>()?;
    let mut priority_classes = HashMap::new();
    for s in &args.priority_classes {
        let (class, rest) = pair("--priority-class", s, "CLASS=NAME:VALUE")?;
        let parsed = rest.split_once(':').and_then(|(name, value)| Some((name.to_owned(), value.parse::<i32>().ok()?)));
        let Some((name, value)) = parsed.filter(|(name, _)| !name.is_empty()) else {
            bail!("--priority-class {s:?}: expected CLASS=NAME:VALUE, such as interactive=gpuplane-interactive:100000");
        };
        priority_classes.insert(class, (name, value));
    }
    Ok(WebhookConfig {
        pool_selector,
        pool_taint_key: args.pool_taint_key.clone(),
        scheduler_name: args.scheduler_name.clone(),
        latency_label: args.latency_label.clone(),
        priority_classes,
        deny_visible_devices_all: !args.allow_visible_devices_all,
    })
}

/// Runs the webhook until SIGTERM or Ctrl-C.
pub fn run(args: WebhookArgs) -> Result<()> {
    let webhook = webhook_config(&args)?;
    service::init_logging(&args.log_format);
    let config = WebhookServeConfig {
        listen: args.listen,
        cert: args.tls_cert,
        key: args.tls_key,
        max_body_bytes: args.max_body_bytes,
        webhook,
        limits: gpuplane_kube::server::Limits::default(),
    };
    // An unusable certificate is reported before anything else.
    gpuplane_kube::tls::server_config(config.cert.clone(), config.key.clone())?;
    service::runtime()?.block_on(serve_webhook(config, shutdown_signal()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: WebhookArgs,
    }

    #[test]
    fn flags_become_the_webhook_settings_and_bad_ones_are_named() -> Result<()> {
        let cli =
            Cli::try_parse_from(["t", "--pool-selector", "pool=a100", "--priority-class", "interactive=chat:500"])?;
        let config = webhook_config(&cli.args)?;
        assert_eq!(config.pool_selector, BTreeMap::from([("pool".to_owned(), "a100".to_owned())]));
        assert_eq!(config.priority_classes["interactive"], ("chat".to_owned(), 500));
        assert!(config.deny_visible_devices_all);
        let cli = Cli::try_parse_from(["t", "--priority-class", "interactive=chat"])?;
        let err = webhook_config(&cli.args).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("--priority-class") && err.contains("CLASS=NAME:VALUE"), "{err}");
        let cli = Cli::try_parse_from(["t", "--pool-selector", "novalue"])?;
        assert!(webhook_config(&cli.args).is_err());
        Ok(())
    }
}
