//! Rust vs JS @ucanto on the same work, as ratios (run: `cargo bench --bench interop`;
//! needs `npm ci` in fixtures/js). Writes `target/bench/interop.json`.
//!
//! - issue: build and sign a `test/echo` invocation with a one-level proof;
//! - server: one request through the server in process (decode, validate,
//!   handle, sign, encode);
//! - http: sequential invocations over loopback HTTP from our client, against
//!   our server and against the JS server.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, BufReader};
use ucanto::client::Connection;
use ucanto::dag::{Ipld, IpldMap};
use ucanto::message::AgentMessage;
use ucanto::principal::{verifier_for, Signer};
use ucanto::server::{HandlerError, Request, Response, Server};
use ucanto::ucan::{Capability, Delegation, Invocation};
use ucanto::validator::CapabilityParser;

const ITERATIONS: usize = 2000;
const HTTP_REQUESTS: usize = 300;

struct Echo;
impl CapabilityParser for Echo {
    fn can(&self) -> &str {
        "test/echo"
    }
    fn parse(&self, cap: &Capability) -> Result<Capability, ucanto::validator::Violation> {
        ucanto::validator::schema::did(&cap.with)?;
        ucanto::validator::schema::string_field(cap.nb.as_ref(), "text")?;
        Ok(cap.clone())
    }
}

fn rate(n: usize, mut f: impl FnMut(usize)) -> f64 {
    for i in 0..n.min(200) {
        f(i);
    }
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    use ucanto::principal::fixtures;
    let (alice, bob, service) = (fixtures::alice(), fixtures::bob(), fixtures::service());
    let proof = Delegation::builder(&alice, bob.did().clone())
        .capability(Capability::new("test/echo", alice.did().as_str()))
        .expiration(4102444800)
        .build()
        .unwrap();
    let build = |i: usize| -> Invocation {
        let nb = IpldMap::from([("text".to_string(), Ipld::String(format!("hello {i}")))]);
        Delegation::builder(&bob, service.did().clone())
            .capability(Capability::new("test/echo", alice.did().as_str()).with_nb(nb))
            .proof(proof.clone())
            .expiration(4102444800)
            .build()
            .unwrap()
    };
    let issue = rate(ITERATIONS, |i| {
        std::hint::black_box(build(i));
    });

    let server = Arc::new(
        Server::builder(Arc::new(service.clone()))
            .provide(Arc::new(Echo), |req: Request| async move {
                Ok::<_, HandlerError>(Response::ok(Ipld::Map(
                    req.capability.nb.unwrap_or_default(),
                )))
            })
            .build(),
    );
    let body = AgentMessage::build(&[build(0)], &[]).unwrap().to_car();
    let start = Instant::now();
    for _ in 0..ITERATIONS {
        std::hint::black_box(ucanto::transport::respond(&server, &body).await.unwrap());
    }
    let served = ITERATIONS as f64 / start.elapsed().as_secs_f64();

    let js: serde_json::Value = {
        let output = tokio::process::Command::new("node")
            .args(["bench.js", "--iterations", &ITERATIONS.to_string()])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/js"))
            .output()
            .await
            .expect("node (run npm ci in fixtures/js first)");
        serde_json::from_slice(&output.stdout).expect("bench.js output")
    };

    // HTTP: the same client against both servers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rust_url = format!("http://{}/", listener.local_addr().unwrap());
    let app = ucanto::transport::router(server.clone(), 1 << 20);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut js_server = tokio::process::Command::new("node")
        .arg("echo-server.js")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/js"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut line = String::new();
    BufReader::new(js_server.stdout.take().unwrap())
        .read_line(&mut line)
        .await
        .unwrap();
    let hello: serde_json::Value = serde_json::from_str(&line).unwrap();
    let js_url = hello["url"].as_str().unwrap().to_string();
    let invocations: Vec<Invocation> = (0..HTTP_REQUESTS).map(build).collect();
    let http = |url: String| {
        let invocations = invocations.clone();
        let connection = Connection::http(verifier_for(service.did()).unwrap(), url);
        async move {
            let start = Instant::now();
            for inv in &invocations {
                let receipt = connection.invoke(inv).await.unwrap();
                assert!(receipt.out().is_ok());
            }
            HTTP_REQUESTS as f64 / start.elapsed().as_secs_f64()
        }
    };
    let http_rust = http(rust_url).await;
    let http_js = http(js_url).await;

    let js_issue = js["issue"].as_f64().unwrap();
    let js_server_rate = js["server"].as_f64().unwrap();
    let report = serde_json::json!({
        "issue": {"rust_ops_per_s": issue, "js_ops_per_s": js_issue, "ratio": issue / js_issue},
        "server": {"rust_ops_per_s": served, "js_ops_per_s": js_server_rate, "ratio": served / js_server_rate},
        "http": {"rust_req_per_s": http_rust, "js_req_per_s": http_js, "ratio": http_rust / http_js},
    });
    println!(
        "{:<8} {:>14} {:>14} {:>8}",
        "bench", "rust ops/s", "js ops/s", "ratio"
    );
    for (name, a, b) in [
        ("issue", issue, js_issue),
        ("server", served, js_server_rate),
        ("http", http_rust, http_js),
    ] {
        println!("{name:<8} {a:>14.0} {b:>14.0} {:>7.1}x", a / b);
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        format!("{dir}/interop.json"),
        serde_json::to_vec_pretty(&report).unwrap(),
    )
    .unwrap();
}
