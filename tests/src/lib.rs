//! Shared helpers for the end-to-end tests: fixture paths, fixed principals,
//! JS peers spawned with node, and a small `test/echo` capability.

pub mod attack;
pub mod drip;
pub mod flood;
pub mod node;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use ucanto::dag::Ipld;
use ucanto::server::{HandlerError, Request, Response, Server};
use ucanto::ucan::Capability;
use ucanto::validator::CapabilityParser;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `fixtures/<rest>`.
pub fn fixture(rest: &str) -> PathBuf {
    repo_root().join("fixtures").join(rest)
}

pub use ucanto::principal::fixtures::{alice, bob, mallory, principal, service};

/// The scenarios of `fixtures/js/client.js` (`--scenario NAME`).
pub const CLIENT_SCENARIOS: &[&str] = &[
    "ok",
    "delegated",
    "wrong-audience",
    "expired",
    "not-yet-valid",
    "forged",
    "broken-chain",
    "missing-proof",
    "expired-proof",
    "handler-not-found",
    "handler-error",
];

/// A JS process started from `fixtures/js`, killed on drop.
pub struct JsPeer {
    /// The child process.
    pub child: Child,
    /// The first line it printed, parsed as JSON.
    pub hello: serde_json::Value,
}

/// Starts `node <script> <args>` in fixtures/js and waits for its first JSON line.
pub async fn spawn_js(script: &str, args: &[&str]) -> JsPeer {
    let mut child = Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(fixture("js"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node is installed (see scripts/test.sh)");
    let hello = hello_line(&mut child, script).await;
    JsPeer { child, hello }
}

/// Runs `node <script> <args>` in fixtures/js to completion; returns (exit code, stdout).
pub async fn run_js(script: &str, args: &[&str]) -> (i32, String) {
    let output = Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(fixture("js"))
        .stderr(Stdio::inherit())
        .output()
        .await
        .expect("node is installed (see scripts/test.sh)");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// `test/echo`: with = any DID, nb = {text: string}; ok = {text}.
pub struct Echo;

impl CapabilityParser for Echo {
    fn can(&self) -> &str {
        "test/echo"
    }
    fn parse(&self, cap: &Capability) -> Result<Capability, ucanto::validator::Violation> {
        // JS Schema wording, so error receipts match JS byte for byte.
        ucanto::validator::schema::did(&cap.with)?;
        ucanto::validator::schema::string_field(cap.nb.as_ref(), "text")?;
        Ok(cap.clone())
    }
}

/// `test/fail`: a handler that always fails unexpectedly.
pub struct Fail;

impl CapabilityParser for Fail {
    fn can(&self) -> &str {
        "test/fail"
    }
    fn parse(&self, cap: &Capability) -> Result<Capability, ucanto::validator::Violation> {
        Ok(cap.clone())
    }
}

/// A Rust server with `test/echo` and `test/fail`, signed by `signer`.
pub fn echo_server(signer: Arc<dyn ucanto::principal::Signer>) -> Server {
    Server::builder(signer)
        .provide(Arc::new(Echo), |req: Request| async move {
            Ok::<_, HandlerError>(Response::ok(Ipld::Map(
                req.capability.nb.unwrap_or_default(),
            )))
        })
        .provide(Arc::new(Fail), |_req: Request| async move {
            Err::<Response, _>(HandlerError::new("test/fail handler always throws"))
        })
        .build()
}

/// Serves `router` on 127.0.0.1 (any free port); returns the base URL.
pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let app = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(listener, app).await.expect("serve");
    });
    format!("http://{addr}/")
}

/// The JSON line a server child (`etracker start`, a JS peer) prints
/// first on its piped stdout; `who` names it in a panic.
pub async fn hello_line(child: &mut Child, who: &str) -> serde_json::Value {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .await
        .expect("read first line");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{who} printed {line:?}: {e}"))
}

/// A binary of the workspace, built fresh for this test process. Cargo only
/// hands `CARGO_BIN_EXE_*` to tests of the binary's own package, so the first
/// call per binary runs `cargo build -p <package> --bin <bin>` (same cargo,
/// profile and target directory as this test binary, found from its path
/// `<target>/<profile>/deps/…`; for `etracker-server`, with the features the
/// test links it with; a no-op when up to date) and later calls reuse it.
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = built.iter().find(|(name, _)| name == bin) {
        return path.clone();
    }
    let exe = std::env::current_exe().expect("path of the test binary");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in <target>/<profile>/deps");
    let target_dir = profile_dir.parent().expect("<target>/<profile>");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(repo_root());
    if package == "etracker-server" {
        // The features this test process links the library with.
        build.arg("--no-default-features").arg(format!(
            "--features={}",
            etracker_server::FEATURES.join(",")
        ));
    }
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            build.arg("--release");
        }
        Some(other) => {
            build.args(["--profile", other]);
        }
        None => panic!("unexpected target layout: {}", exe.display()),
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "cargo build --bin {bin} failed");
    let path = profile_dir.join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} was not built", path.display());
    built.push((bin.to_string(), path.clone()));
    path
}

/// The `etracker` binary (server/src/main.rs).
pub fn etracker_bin() -> PathBuf {
    workspace_bin("etracker-server", "etracker")
}

/// SIGKILL to `child`, and wait until it is gone (its store lock and its
/// port released).
pub async fn kill9(mut child: Child) {
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reaped");
}

/// The `ucanto` CLI (src/bin/ucanto.rs).
pub fn ucanto_bin() -> PathBuf {
    workspace_bin("ucanto", "ucanto")
}

/// The value of the cookie `name` a response sets, if it sets one.
pub fn set_cookie_value(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
}

/// Logs in to the dashboard at `url` (ending in `/`) through its form, as
/// a browser would: the session cookie's value.
pub async fn dashboard_login(url: &str, user: &str, password: &str) -> String {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = client
        .get(format!("{url}admin/login"))
        .send()
        .await
        .unwrap();
    let csrf = set_cookie_value(&form, "etracker_login").expect("login cookie");
    let login = client
        .post(format!("{url}admin/login"))
        .header(reqwest::header::COOKIE, format!("etracker_login={csrf}"))
        .form(&[("user", user), ("password", password), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    set_cookie_value(&login, "etracker_session").expect("logged in")
}

/// Peak resident memory of this process, in bytes (Linux): what a test
/// alone in its binary measures of the tracker it runs in process.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
