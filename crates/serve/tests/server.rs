//! gpuplane's HTTP server (extender, webhook, scheduler metrics, cache agent), attacked over real sockets:
//! connections that send nothing, half a header, or stay idle after a response are closed after the header
//! deadline, no more than the connection limit are served at once, and one address over its cap is closed
//! while others are served.
#![allow(clippy::unwrap_used)] // A failed unwrap is a failed test, with its location.

use std::time::{Duration, Instant};

use gpuplane_serve::{Limits, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn server(limits: Limits) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    tokio::spawn(serve(listener, None, app, limits, std::future::pending()));
    addr
}

/// Reads until the server closes the connection; the time it took.
async fn closed_after(stream: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the server kept the connection open for 10 s"),
        }
    }
}

const SHORT: Limits = Limits {
    max_connections: 64,
    header_timeout: Duration::from_millis(300),
    max_lifetime: Some(Duration::from_secs(60)),
    max_per_client: None,
};

#[tokio::test]
async fn silent_half_sent_and_idle_connections_are_closed() {
    let addr = server(SHORT).await;
    // Sends nothing.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(closed_after(&mut silent).await < Duration::from_secs(3));
    // Half a header, then nothing (slowloris).
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: gpuplane\r\n").await.unwrap();
    assert!(closed_after(&mut slow).await < Duration::from_secs(3));
    // A whole request, answered, then idle on a keep-alive connection.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: gpuplane\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(closed_after(&mut idle).await < Duration::from_secs(3));
}

#[tokio::test]
async fn no_more_than_the_connection_limit_are_served() {
    let limits = Limits { max_connections: 2, header_timeout: Duration::from_secs(30), ..SHORT };
    let addr = server(limits).await;
    let hold_a = TcpStream::connect(addr).await.unwrap();
    let _hold_b = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(b"GET / HTTP/1.1\r\nHost: gpuplane\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(early.is_err(), "a third connection was served while two held both slots");
    drop(hold_a);
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_client_over_its_cap_is_closed_and_other_clients_are_served() {
    let limits =
        Limits { max_connections: 8, header_timeout: Duration::from_secs(30), max_per_client: Some(2), ..SHORT };
    let addr = server(limits).await;
    let from = |ip: [u8; 4]| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(std::net::SocketAddr::from((ip, 0))).unwrap();
        socket.connect(addr).await.unwrap()
    };
    // Two idle connections from 127.0.0.2 are kept; a third is closed within about a second.
    let _held = (from([127, 0, 0, 2]).await, from([127, 0, 0, 2]).await);
    let mut third = from([127, 0, 0, 2]).await;
    assert!(closed_after(&mut third).await < Duration::from_secs(3));
    // Another address is served.
    let mut other = from([127, 0, 0, 1]).await;
    other.write_all(b"GET / HTTP/1.1\r\nHost: gpuplane\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = other.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}
