//! The processes a benchmark talks to: the `etracker` binary of this build,
//! the JS @ucanto track peer, and a node serving batch files.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::batch::Principals;

/// A running server process: its URL, and the child to measure and stop.
pub(crate) struct Peer {
    pub(crate) url: String,
    pub(crate) child: Child,
}

impl Peer {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Peak resident memory (VmHWM), in bytes.
    pub(crate) fn peak_rss(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:") * 1024
    }

    /// CPU seconds used so far (user + system).
    pub(crate) fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&self.pid().to_string())
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) process `pid` (or `self`) has used.
pub(crate) fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // sysconf(_SC_CLK_TCK) is 100 on every Linux this runs on.
    ticks as f64 / 100.0
}

/// `etracker start` on a fresh data directory, with the service's key.
pub(crate) async fn etracker(p: &Principals, data_dir: &Path) -> Peer {
    let _ = std::fs::remove_dir_all(data_dir);
    etracker_on(p, data_dir, &[]).await
}

/// `etracker start` on `data_dir` as it is, with the service's key and
/// `env` set besides the benchmarks' settings.
pub(crate) async fn etracker_on(p: &Principals, data_dir: &Path, env: &[(&str, &str)]) -> Peer {
    let mut command = Command::new(env!("CARGO_BIN_EXE_etracker"));
    command.envs(env.iter().copied());
    // Heap profiling: heaptrack's preload library, writing raw data to the
    // file named (the arena limit set here as `etracker` would, so it does
    // not start again).
    if let Some(out) = std::env::var_os("BENCH_HEAPTRACK") {
        command
            .env("LD_PRELOAD", "/usr/lib/heaptrack/libheaptrack_preload.so")
            .env("DUMP_HEAPTRACK_OUTPUT", out)
            .env("MALLOC_ARENA_MAX", etracker_server::MALLOC_ARENA_MAX);
    }
    let mut child = command
        .args(["start", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .env("ETRACKER_PRIVATE_KEY", p.service.format())
        .env("ETRACKER_SPACE_POLICY", "any")
        .env("ETRACKER_MIN_BATCH_SIZE", "0")
        .env("ETRACKER_MAX_BATCH_SIZE", (4u64 << 30).to_string())
        .env("ETRACKER_ALLOW_PRIVATE_ENDPOINTS", "true")
        .env("ETRACKER_CONSOLIDATION_INTERVAL", "86400")
        .env("ETRACKER_MAX_CONCURRENT_REQUESTS", "1024")
        .env(
            "RUST_LOG",
            std::env::var("BENCH_TRACKER_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn etracker (cargo bench builds it)");
    let url = hello_url(&mut child).await;
    Peer { url, child }
}

/// The JS @ucanto track peer (`fixtures/js/track-peer.js`) with the service's key.
pub(crate) async fn js_track_peer(p: &Principals, log: &Path) -> Peer {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/js/track-peer.js");
    let _ = std::fs::remove_file(log);
    let mut child = Command::new("node")
        .arg(script)
        .arg("--log")
        .arg(log)
        .arg("--key")
        .arg(p.service.format())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node (scripts/bench installs fixtures/js)");
    let url = hello_url(&mut child).await;
    Peer { url, child }
}

async fn hello_url(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .await
        .expect("hello line");
    let hello: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    hello["url"].as_str().unwrap().to_string()
}

/// Serves the files of `dir` at `GET /receipts/{name}`, streamed from disk.
/// Returns the endpoint template.
pub(crate) async fn node_server(dir: PathBuf) -> String {
    async fn serve(
        State(dir): State<PathBuf>,
        axum::extract::Path(cid): axum::extract::Path<String>,
    ) -> Result<Body, axum::http::StatusCode> {
        let path = dir.join(format!("{cid}.car"));
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|_| axum::http::StatusCode::NOT_FOUND)?;
        let stream = futures_util::stream::unfold(file, |mut file| async move {
            let mut buf = vec![0; 1 << 20];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(buf), file))
                }
                Err(e) => Some((Err(e), file)),
            }
        });
        Ok(Body::from_stream(stream))
    }
    let app = axum::Router::new()
        .route("/receipts/{cid}", axum::routing::get(serve))
        .with_state(dir);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/receipts/{{cid}}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    endpoint
}

/// Waits until `url` answers `GET /health`.
/// Runs consolidation now on the tracker at `url`; its summary.
pub(crate) async fn consolidate_now(url: &str) -> serde_json::Value {
    let summary = reqwest::Client::new()
        .post(format!("{url}consolidate"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    serde_json::from_slice(&summary).unwrap()
}

/// The value of `name` on the `/metrics` of the tracker at `url`.
pub(crate) async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{url}metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

pub(crate) async fn ready(url: &str) {
    for _ in 0..100 {
        if reqwest::get(format!("{url}health")).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never became healthy");
}

/// The node tracks `batch`, served at `endpoint`, on the tracker at `url`
/// (with the service's delegation); returns the consolidate task's CID.
pub(crate) async fn track(
    p: &Principals,
    url: &str,
    batch: cid::Cid,
    endpoint: String,
) -> cid::Cid {
    use etracker_capabilities::track::TrackNb;
    use etracker_capabilities::{Ability, Track};
    use ucanto::principal::Signer;
    let proof = ucanto::ucan::Delegation::builder(&p.service, p.node.did().clone())
        .capability(Track::unrestricted(p.service.did()))
        .no_expiration()
        .build()
        .unwrap();
    let track = ucanto::ucan::Delegation::builder(&p.node, p.service.did().clone())
        .capability(Track::capability(
            p.service.did(),
            &TrackNb::new(batch, endpoint).unwrap(),
        ))
        .proof(proof)
        .build()
        .unwrap();
    let receipt = ucanto::client::Connection::http(p.service.verifier(), url)
        .invoke(&track)
        .await
        .unwrap();
    assert!(receipt.out().is_ok(), "{:?}", receipt.out());
    receipt.forks()[0].cid()
}
