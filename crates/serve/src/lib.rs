//! Serving a router to clients that may be hostile, over plain TCP or TLS: at most
//! [`Limits::max_connections`] connections at once, and optionally at most [`Limits::max_per_client`] from one
//! address (a connection over that is held a second, then closed, so a client reconnecting in a loop neither
//! fills the server nor floods the accept queue); a deadline for the TLS handshake and for every request's
//! headers (which also ends connections left idle between requests; one second for connections accepted
//! while over half the slots are taken); optionally a cap on a connection's lifetime. Each request carries its
//! client's address as axum's `ConnectInfo<SocketAddr>`. The extender, the admission webhook, the scheduler's
//! metrics and the cache agent all run on it.
#![forbid(unsafe_code)]

mod slots;

pub use slots::{Slot, Slots};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ConnectInfo;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, watch};

/// What one server grants its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Deadline for a TLS handshake, and for a request's headers from the moment the server waits for them
    /// (a connection that sends nothing, or stays idle after a response this long, is closed).
    pub header_timeout: Duration,
    /// Longest a connection lives, if capped; then it gets `header_timeout` to finish its request in flight.
    pub max_lifetime: Option<Duration>,
    /// Connections one client address may hold at once, if capped; a connection over the cap is closed as
    /// soon as it is accepted.
    pub max_per_client: Option<usize>,
}

/// The header deadline of connections accepted while over half the server's slots are taken.
const BUSY_HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a connection over its client's cap is held before it is closed.
const TARPIT: Duration = Duration::from_secs(1);
/// Most connections held that way at once; more are closed at once.
const TARPIT_MAX: usize = 4096;

/// A place among the connections held before closing.
struct Held(Arc<AtomicUsize>);

impl Held {
    fn take(count: &Arc<AtomicUsize>) -> Option<Held> {
        let n = count.fetch_add(1, Ordering::AcqRel);
        let held = Held(Arc::clone(count));
        (n < TARPIT_MAX).then_some(held)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            max_lifetime: Some(Duration::from_secs(300)),
            max_per_client: None,
        }
    }
}

/// Serves `app` on `listener`, over TLS when `tls` is given, until `shutdown` completes; then open connections
/// finish the request in flight and close. A failed handshake or connection is logged and affects nothing else.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: axum::Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let clients = Slots::<IpAddr>::new(None, limits.max_per_client);
    let tarpit = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = clients.try_take(&peer.ip()) else {
            // Over its cap: the server's slot is free again for other clients at once, and the connection
            // is held a second before it is closed (up to a bound), so that a client reconnecting in a loop
            // does not flood the accept queue every other client waits in.
            tracing::debug!(%peer, "Connection over the client's cap closed.");
            drop(permit);
            if let Some(held) = Held::take(&tarpit) {
                tokio::spawn(async move {
                    tokio::time::sleep(TARPIT).await;
                    drop((stream, held));
                });
            }
            continue;
        };
        // Under load (over half the slots taken) a new connection gets a short header deadline: a client
        // that means it sends its headers at once, and attackers' idle connections give their slots back
        // ten times sooner.
        let mut limits = limits;
        if slots.available_permits() < limits.max_connections.max(1) / 2 {
            limits.header_timeout = limits.header_timeout.min(BUSY_HEADER_TIMEOUT);
        }
        let (acceptor, app, stop) = (acceptor.clone(), app.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _slot = slot;
            match acceptor {
                None => connection(TokioIo::new(stream), app, limits, stop, peer).await,
                Some(acceptor) => match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => connection(TokioIo::new(tls), app, limits, stop, peer).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed."),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out."),
                },
            }
        });
    }
    let _ = stop_tx.send(true);
}

/// Serves one connection until it ends, its lifetime is up or the server stops.
async fn connection<I>(io: I, app: axum::Router, limits: Limits, mut stop: watch::Receiver<bool>, peer: SocketAddr)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let app = tower::ServiceExt::map_request(app, move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    });
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let lifetime = async {
        match limits.max_lifetime {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = lifetime => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(limits.header_timeout, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "Connection ended with an error.");
    }
}
