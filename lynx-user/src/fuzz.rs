//! Entry points for `cargo fuzz` (the `fuzz/` crate), one per parser of input from outside:
//! each takes the fuzzer's bytes through the same code the daemon runs, and must neither panic
//! nor hang. Built only with `--cfg fuzzing`, which cargo-fuzz sets.
use std::{
    io::Write,
    os::unix::net::UnixStream,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use tokio::io::AsyncWriteExt;

use crate::{
    collector::sockets,
    config::Config,
    lxd::{self, events::EventStream},
    model::Snapshot,
    unix_http as http,
    web::{self, WebOptions},
};

/// One HTTP request (any bytes) to the daemon's HTTP server, over an in-memory connection.
pub fn http_request(bytes: &[u8]) {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    });
    let latest: Arc<Mutex<Option<Arc<Snapshot>>>> = Arc::default();
    let options = WebOptions {
        listen: "127.0.0.1:9464".parse().expect("an address"),
        allowed_hosts: vec!["lynx.example.org".into()],
        max_connections: 1,
        timeout: Duration::from_millis(100),
        retry: Duration::from_secs(1),
        actions: false,
        login_file: None,
        lxd_sockets: Vec::new(),
        history_path: None,
    };
    let app = web::router(web::AppState::new(latest), &options);
    let request = bytes.to_vec();
    runtime.block_on(async move {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(web::serve_connection(server, app, options.timeout));
        let _ = client.write_all(&request).await;
        let _ = client.shutdown().await;
        let mut answer = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut answer).await;
        let _ = served.await;
    });
}

/// An answer from LXD's socket, as the client reads it.
pub fn lxd_response(bytes: &[u8]) {
    let _ = http::read_response(&mut &bytes[..], "GET");
}

/// LXD's event stream after the websocket upgrade: frames, as the event listener reads them.
pub fn lxd_events(bytes: &[u8]) {
    let Ok((mut lxd, ours)) = UnixStream::pair() else {
        return;
    };
    // Written whole before reading, then closed: the reader never waits.
    if bytes.len() > 64 * 1024 || lxd.write_all(bytes).is_err() {
        return;
    }
    drop(lxd);
    let mut stream = EventStream::over(ours, Duration::from_millis(10));
    for _ in 0..64 {
        match stream.recv() {
            Ok(crate::lxd::events::Next::Event(_)) => {}
            _ => return,
        }
    }
}

/// LXD's JSON for instances, an instance's state and networks.
pub fn lxd_json(bytes: &[u8]) {
    let _ = lxd::parse_instances(bytes);
    let _ = lxd::parse_state(bytes);
    let _ = lxd::parse_networks(bytes);
}

/// One batch of a `sock_diag` netlink dump.
pub fn netlink(bytes: &[u8]) {
    let _ = sockets::parse_batch(bytes);
}

/// A config file.
pub fn config(bytes: &[u8]) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = Config::parse("fuzz.toml".as_ref(), text);
    }
}
