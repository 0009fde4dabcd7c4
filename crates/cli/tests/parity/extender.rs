//! The recording extender of the parity test: an HTTP/1.1 server on 127.0.0.1 that kube-scheduler calls with
//! the nodes its own filters passed for a pod; it records them and answers that no node fits, so nothing binds.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

/// Filter calls the recording extender received: `namespace/name` → the node names kube-scheduler passed,
/// at each attempt (a pod is tried again when the cluster changes).
pub type Recorded = Arc<Mutex<HashMap<String, Vec<BTreeSet<String>>>>>;

/// An HTTP/1.1 extender on 127.0.0.1 that records each filter call and answers that no node fits.
pub fn recording_extender() -> (u16, Recorded) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let recorded: Recorded = Arc::default();
    let sink = Arc::clone(&recorded);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let sink = Arc::clone(&sink);
            std::thread::spawn(move || serve_connection(stream, &sink));
        }
    });
    (port, recorded)
}

fn serve_connection(stream: std::net::TcpStream, sink: &Recorded) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        // Request line and headers, up to the blank line; a closed connection ends the loop.
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some((name, value)) = trimmed.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let args: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let pod = &args["Pod"]["metadata"];
        let key = format!("{}/{}", pod["namespace"].as_str().unwrap_or(""), pod["name"].as_str().unwrap_or(""));
        let names: BTreeSet<String> =
            args["NodeNames"].as_array().into_iter().flatten().filter_map(|n| n.as_str().map(str::to_owned)).collect();
        let failed: serde_json::Map<String, Value> =
            names.iter().map(|n| (n.clone(), json!("recorded by the parity test"))).collect();
        sink.lock().unwrap().entry(key).or_default().push(names);
        let reply = json!({"NodeNames": [], "FailedNodes": failed, "Error": ""}).to_string();
        let head =
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", reply.len());
        if writer.write_all(head.as_bytes()).and_then(|()| writer.write_all(reply.as_bytes())).is_err() {
            return;
        }
    }
}
