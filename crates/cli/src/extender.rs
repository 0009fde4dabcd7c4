//! `gpuplane extender`: the kube-scheduler extender against a live cluster (see docs/extender.md). It trusts
//! no request beyond the pod's identity: the pod evaluated and bound is the one its own watch (or the API
//! server) has, only pods of `--scheduler-name` are served, and with `--client-ca` only certificates naming a
//! `--client-identity` may call.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use gpuplane_kube::extender::{DEFAULT_MAX_BODY_BYTES, DEFAULT_SCHEDULER_NAME};
use gpuplane_kube::serve::{ServeConfig, run_extender};
use gpuplane_kube::tls::ClientAuth;
use gpuplane_place::Policy;

use crate::service;

/// Arguments of `gpuplane extender`.
#[derive(Debug, Args)]
pub struct ExtenderArgs {
    /// Address to serve filter, prioritize, bind, preempt, /metrics and /healthz on
    #[arg(long, default_value = "0.0.0.0:8888")]
    listen: SocketAddr,
    /// Placement policy: random, dotprod, clustering, packing, bestfit, fgd or gpuplane
    #[arg(long, default_value = "fgd")]
    policy: String,
    /// How often the snapshot is rebuilt when Nodes or Pods changed, in milliseconds
    #[arg(long, default_value_t = 500)]
    refresh_ms: u64,
    /// How long a binding is kept while the watch has not shown it yet, in seconds
    #[arg(long, default_value_t = 60)]
    in_flight_ttl_s: u64,
    /// Serve HTTPS with this certificate (PEM; reread when it changes); with --tls-key
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The certificate's private key (PEM)
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Accept only clients presenting a certificate signed by this CA (PEM) that names a --client-identity;
    /// needs --tls-cert. Give kube-scheduler a client certificate in its extender tlsConfig (deploy/extender/)
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<std::path::PathBuf>,
    /// With --client-ca: the client certificate's subject CN, or one of its DNS SANs, must be this name
    /// (repeatable). kubeadm gives kube-scheduler's certificate CN system:kube-scheduler; the same CA signs
    /// every kubelet's, so the CA alone does not say who calls
    #[arg(long = "client-identity", value_name = "NAME", default_value = "system:kube-scheduler",
          requires = "client_ca", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    client_identities: Vec<String>,
    /// Serve only pods whose spec.schedulerName is this (repeatable); other pods are refused with the reason
    #[arg(long = "scheduler-name", value_name = "NAME", default_value = DEFAULT_SCHEDULER_NAME,
          value_parser = clap::builder::NonEmptyStringValueParser::new())]
    scheduler_names: Vec<String>,
    /// Largest request body accepted, in bytes (the default fits 5,000 whole Nodes with room; see docs/extender.md)
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Log format on standard error: text or json (level from RUST_LOG, default info)
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// Runs the extender until SIGTERM or Ctrl-C.
pub fn run(args: ExtenderArgs) -> Result<()> {
    let policy: Policy = args.policy.parse().context("--policy")?;
    service::init_logging(&args.log_format);
    // FGD needs a target workload: learned from the cluster's pods, else the openb default trace.
    let fallback = service::fallback_target()?;
    let clients = args.client_ca.clone().map(|ca| ClientAuth { ca, identities: args.client_identities.clone() });
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            if clients.is_none() {
                tracing::warn!(
                    "No --client-ca: any client that can reach the port can call /bind; give kube-scheduler a client certificate."
                );
            }
            Some(
                gpuplane_kube::tls::server_config_for_clients(cert.clone(), key.clone(), clients)
                    .context("extender TLS")?,
            )
        }
        _ => {
            tracing::warn!(
                "Serving plain HTTP: anyone who can reach the port can bind pods it filtered; give --tls-cert, --tls-key and --client-ca."
            );
            None
        }
    };
    let config = ServeConfig {
        tls,
        listen: args.listen,
        policy,
        refresh_every: Duration::from_millis(args.refresh_ms.max(10)),
        in_flight_ttl: Duration::from_secs(args.in_flight_ttl_s),
        limits: gpuplane_kube::server::Limits::default(),
        extender: gpuplane_kube::ExtenderConfig {
            max_body_bytes: args.max_body_bytes,
            scheduler_names: args.scheduler_names,
            ..Default::default()
        },
    };
    service::runtime()?.block_on(run_extender(config, Some(fallback)))?;
    Ok(())
}
