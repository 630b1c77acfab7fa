//! The `ucanto` CLI against JS @ucanto, driven the way the
//! storacha-network/ucanto-compat harness drives implementations.
//!
//! Both sides speak the harness's CLI contract: our binary, and
//! `fixtures/js/compat-peer.js` (the same commands on the real JS packages).
//! [`Peer`] mirrors the harness's `api.js`: `key gen` output must decode as a
//! key, `server start` prints `{id, url}` and stops on `POST /shutdown` (202),
//! `invoke` prints `{headers, body}` whose body holds exactly one receipt.
//! The harness's two tests ("generates keys", "invokes test/echo") run in every
//! direction, then delegations, RSA keys, the JS client's scenarios and the
//! fixture JS echo server.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use etracker_e2e::{alice, echo_server, fixture, run_js, service, spawn_js, ucanto_bin};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use ucanto::dag::{Ipld, IpldMap};
use ucanto::message::AgentMessage;
use ucanto::principal::{decode_signer, verifier_for, Did, RsaSigner, Signer};
use ucanto::receipt::Receipt;
use ucanto::server::error_name;
use ucanto::ucan::Delegation;

/// Longest a CLI command or a server shutdown may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// One implementation of the CLI contract.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Peer {
    /// Our `ucanto` binary.
    Rust,
    /// `node fixtures/js/compat-peer.js` on the real @ucanto packages.
    Js,
}

/// What the command printed and how it exited.
struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// A private key as `key gen` printed it.
#[derive(Clone, Debug)]
struct Key {
    did: Did,
    bytes: Vec<u8>,
}

impl Key {
    /// The `--issuer` form the harness passes: multibase base64pad ("M…").
    fn arg(&self) -> String {
        m(&self.bytes)
    }
}

/// A running `server start`.
struct Service {
    child: Child,
    id: Did,
    url: String,
}

/// Multibase base64pad ("M…"), as the harness's `base64pad.encode`.
fn m(bytes: &[u8]) -> String {
    format!("M{}", base64(bytes))
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn field<'a>(value: &'a Ipld, name: &str) -> &'a Ipld {
    match value {
        Ipld::Map(map) => map
            .get(name)
            .unwrap_or_else(|| panic!("no {name:?} in {value:?}")),
        _ => panic!("expected a map, got {value:?}"),
    }
}

fn bytes(value: &Ipld) -> Vec<u8> {
    match value {
        Ipld::Bytes(b) => b.clone(),
        other => panic!("expected bytes, got {other:?}"),
    }
}

fn string(value: &Ipld) -> String {
    match value {
        Ipld::String(s) => s.clone(),
        other => panic!("expected a string, got {other:?}"),
    }
}

fn nb(pairs: &[(&str, &str)]) -> Ipld {
    Ipld::Map(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Ipld::String(v.to_string())))
            .collect(),
    )
}

impl Peer {
    fn command(self) -> Command {
        match self {
            Peer::Rust => Command::new(ucanto_bin()),
            Peer::Js => {
                let mut command = Command::new("node");
                command.arg("compat-peer.js").current_dir(fixture("js"));
                command
            }
        }
    }

    /// Runs a command to completion.
    async fn output(self, args: &[&str]) -> Output {
        let run = self.command().args(args).stdin(Stdio::null()).output();
        let out = tokio::time::timeout(TIMEOUT, run)
            .await
            .unwrap_or_else(|_| panic!("{self:?} {args:?} timed out"))
            .expect("the command starts");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs a command that must succeed and print one dag-json value — and
    /// nothing on stderr, which the harness reads merged with stdout.
    async fn run(self, args: &[&str]) -> Ipld {
        let out = self.output(args).await;
        assert_eq!(out.code, 0, "{self:?} {args:?}: {}", out.stderr);
        if self == Peer::Rust {
            assert_eq!(out.stderr, "", "{args:?} wrote to stderr");
        }
        assert_eq!(out.stdout.lines().count(), 1, "one line: {:?}", out.stdout);
        ucanto::dag_json::decode(out.stdout.trim())
            .unwrap_or_else(|e| panic!("{self:?} {args:?} printed {:?}: {e}", out.stdout))
    }

    /// `key gen --type T`; like the harness, the key must decode (here with
    /// our decoder) to the DID printed with it.
    async fn key_gen(self, key_type: &str) -> Key {
        let out = self.run(&["key", "gen", "--type", key_type]).await;
        let did: Did = string(field(&out, "id")).parse().unwrap();
        let bytes = bytes(field(&out, "key"));
        let signer = decode_signer(&bytes)
            .unwrap_or_else(|e| panic!("{self:?} {key_type} key does not decode: {e}"));
        assert_eq!(signer.did(), &did, "{self:?} {key_type}: key and id agree");
        let tag = if key_type.eq_ignore_ascii_case("rsa") {
            0x85
        } else {
            0x80
        };
        assert_eq!((bytes[0], bytes[1]), (tag, 0x26), "{key_type} multicodec");
        Key { did, bytes }
    }

    /// `server start`: reads the `{id, url}` line and leaves it running.
    async fn start_service(self) -> Service {
        let mut child = self
            .command()
            .args(["server", "start"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("server starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(TIMEOUT, lines.next_line())
            .await
            .expect("server prints its address in time")
            .unwrap()
            .expect("server prints a line");
        let out = ucanto::dag_json::decode(&line)
            .unwrap_or_else(|e| panic!("{self:?} server printed {line:?}: {e}"));
        let Ipld::Map(map) = &out else {
            panic!("{line}")
        };
        assert_eq!(
            map.keys().collect::<Vec<_>>(),
            ["id", "url"],
            "{self:?}: {line}"
        );
        let id: Did = string(field(&out, "id")).parse().unwrap();
        let url = string(field(&out, "url"));
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        Service { child, id, url }
    }

    /// `invoke`; like the harness, decodes `{headers, body}` and requires
    /// exactly one receipt, here also signed by the service.
    async fn invoke(
        self,
        service: &Service,
        issuer: &Key,
        resource: &Did,
        caveats: Option<&Ipld>,
        proof: Option<&[u8]>,
    ) -> Receipt {
        let caveats = caveats.map(|c| ucanto::dag_json::to_string(c).unwrap());
        let proof = proof.map(m);
        let mut args = vec!["invoke", "--url", &service.url, "--issuer"];
        let issuer_arg = issuer.arg();
        args.push(&issuer_arg);
        args.extend(["--audience", service.id.as_str()]);
        args.extend(["--resource", resource.as_str(), "--ability", "test/echo"]);
        if let Some(caveats) = &caveats {
            args.extend(["--caveats", caveats]);
        }
        if let Some(proof) = &proof {
            args.extend(["--proof", proof]);
        }
        let out = self.run(&args).await;
        let Ipld::Map(headers) = field(&out, "headers") else {
            panic!("headers must be a map: {out:?}")
        };
        assert_eq!(
            headers.get("content-type"),
            Some(&Ipld::String("application/vnd.ipld.car".into())),
            "{self:?}: {headers:?}"
        );
        let message = AgentMessage::from_car(&bytes(field(&out, "body"))).unwrap();
        assert_eq!(message.report().len(), 1, "exactly one receipt");
        let link = message.report().values().next().unwrap();
        let receipt = Receipt::from_blocks(link, message.blocks().clone()).unwrap();
        let verifier = verifier_for(&service.id).unwrap();
        assert!(
            receipt.verify_signature(verifier.as_ref()),
            "signed by the service"
        );
        receipt
    }

    /// `delegation create`; returns the archive, checked to hold what was asked.
    async fn delegate(
        self,
        issuer: &Key,
        audience: &Did,
        resource: &Did,
        expiration: Option<u64>,
        proof: Option<&[u8]>,
    ) -> Vec<u8> {
        let issuer_arg = issuer.arg();
        let expiration_arg = expiration.map(|e| e.to_string());
        let proof = proof.map(m);
        let mut args = vec!["delegation", "create", "--issuer", &issuer_arg];
        args.extend([
            "--audience",
            audience.as_str(),
            "--resource",
            resource.as_str(),
        ]);
        args.extend(["--ability", "test/echo"]);
        if let Some(exp) = &expiration_arg {
            args.extend(["--expiration", exp]);
        }
        if let Some(proof) = &proof {
            args.extend(["--proof", proof]);
        }
        let archive = bytes(field(&self.run(&args).await, "delegation"));
        let delegation = Delegation::extract(&archive).unwrap();
        assert_eq!(delegation.issuer(), &issuer.did);
        assert_eq!(delegation.audience(), audience);
        assert_eq!(delegation.expiration(), expiration);
        assert_eq!(delegation.capabilities().len(), 1);
        assert_eq!(delegation.capabilities()[0].can, "test/echo");
        assert_eq!(delegation.capabilities()[0].with, resource.as_str());
        let verifier = verifier_for(&issuer.did).unwrap();
        assert!(delegation.verify_signature(verifier.as_ref()));
        archive
    }
}

impl Service {
    /// `POST /shutdown` must answer 202, and the process must then exit cleanly.
    async fn stop(mut self) {
        assert_eq!(post(&self.url, "/shutdown").await, 202);
        let status = tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .expect("the server exits after /shutdown")
            .unwrap();
        assert!(status.success(), "{status}");
    }
}

/// A bodiless `POST <path>` over a plain socket; returns the status code.
async fn post(url: &str, path: &str) -> u16 {
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    let mut socket = tokio::net::TcpStream::connect(host).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

fn ok_out(receipt: &Receipt) -> &Ipld {
    match receipt.out() {
        Ok(value) => value,
        Err(error) => panic!("expected ok, got {error:?}"),
    }
}

/// The harness's "generates keys": both peers generate ed25519 and RSA keys
/// that decode; each side's keys also load on the other side (JS
/// `ed25519.decode` / `rsa.decode`) with the same DID and make byte-identical
/// signatures (EdDSA and RS256 PKCS#1 v1.5 are both deterministic).
#[tokio::test(flavor = "multi_thread")]
async fn generates_keys_that_both_sides_load() {
    for peer in [Peer::Rust, Peer::Js] {
        for key_type in ["ed25519", "rsa"] {
            let key = peer.key_gen(key_type).await;
            let text = format!("signed by {key_type} from {peer:?}");
            let js = Peer::Js
                .run(&[
                    "key",
                    "check",
                    "--type",
                    key_type,
                    "--key",
                    &key.arg(),
                    "--text",
                    &text,
                ])
                .await;
            assert_eq!(
                string(field(&js, "id")),
                key.did.as_str(),
                "{peer:?} {key_type}"
            );
            let ours = decode_signer(&key.bytes).unwrap().sign(text.as_bytes());
            assert_eq!(
                bytes(field(&js, "signature")),
                ours.encode(),
                "{peer:?} {key_type}"
            );
        }
    }
    // The type is case-insensitive, and defaults to ed25519.
    assert!(Peer::Rust
        .key_gen("RSA")
        .await
        .did
        .as_str()
        .starts_with("did:key:z4MX"));
    let default = Peer::Rust.run(&["key", "gen"]).await;
    assert!(string(field(&default, "id")).starts_with("did:key:z6Mk"));
}

/// The harness's "invokes test/echo" in every direction: a fresh key invokes
/// `test/echo` on its own DID and gets `{ok: caveats}` back — with ed25519
/// and with RSA issuers (the JS server accepting RS256 from our CLI).
#[tokio::test(flavor = "multi_thread")]
async fn invokes_test_echo_in_every_direction() {
    for (client, server) in [
        (Peer::Rust, Peer::Js),
        (Peer::Js, Peer::Rust),
        (Peer::Rust, Peer::Rust),
    ] {
        let service = server.start_service().await;
        for key_type in ["ed25519", "rsa"] {
            let issuer = client.key_gen(key_type).await;
            let caveats = nb(&[("echo", &format!("test {key_type} {client:?} → {server:?}"))]);
            let receipt = client
                .invoke(&service, &issuer, &issuer.did, Some(&caveats), None)
                .await;
            assert_eq!(
                ok_out(&receipt),
                &caveats,
                "{client:?} → {server:?} {key_type}"
            );
            assert_eq!(receipt.issuer(), Some(&service.id));
        }
        service.stop().await;
    }
}

/// Delegations made by one side prove invocations made by the other, on both
/// servers: an RSA key from our CLI delegates to a JS key; a JS key delegates
/// to one of ours; a two-link chain mixes both; and a delegation to someone
/// else or an expired one is refused alike.
#[tokio::test(flavor = "multi_thread")]
async fn delegations_cross_between_implementations() {
    let servers = [
        Peer::Rust.start_service().await,
        Peer::Js.start_service().await,
    ];
    let rsa_owner = Peer::Rust.key_gen("rsa").await;
    let js_agent = Peer::Js.key_gen("ed25519").await;
    let js_owner = Peer::Js.key_gen("ed25519").await;
    let rust_agent = Peer::Rust.key_gen("ed25519").await;
    let caveats = nb(&[("echo", "delegated")]);

    // Our RSA key → JS key; JS invokes with it as proof.
    let to_js = Peer::Rust
        .delegate(&rsa_owner, &js_agent.did, &rsa_owner.did, None, None)
        .await;
    // JS key → our key; we invoke with it as proof.
    let to_rust = Peer::Js
        .delegate(
            &js_owner,
            &rust_agent.did,
            &js_owner.did,
            Some(4102444800),
            None,
        )
        .await;
    // A chain: our RSA key → JS key (to_js) → our key, re-delegated by JS.
    let chain = Peer::Js
        .delegate(
            &js_agent,
            &rust_agent.did,
            &rsa_owner.did,
            None,
            Some(&to_js),
        )
        .await;
    for service in &servers {
        let receipt = Peer::Js
            .invoke(
                service,
                &js_agent,
                &rsa_owner.did,
                Some(&caveats),
                Some(&to_js),
            )
            .await;
        assert_eq!(ok_out(&receipt), &caveats);
        let receipt = Peer::Rust
            .invoke(
                service,
                &rust_agent,
                &js_owner.did,
                Some(&caveats),
                Some(&to_rust),
            )
            .await;
        assert_eq!(ok_out(&receipt), &caveats);
        let receipt = Peer::Rust
            .invoke(
                service,
                &rust_agent,
                &rsa_owner.did,
                Some(&caveats),
                Some(&chain),
            )
            .await;
        assert_eq!(ok_out(&receipt), &caveats);
    }

    // Refusals: the proof is for someone else; the proof has expired.
    let expired = Peer::Rust
        .delegate(
            &rsa_owner,
            &js_agent.did,
            &rsa_owner.did,
            Some(1600000000),
            None,
        )
        .await;
    let mut outcomes = Vec::new();
    for service in &servers {
        let not_ours = Peer::Rust
            .invoke(
                service,
                &rust_agent,
                &rsa_owner.did,
                Some(&caveats),
                Some(&to_js),
            )
            .await;
        let stale = Peer::Js
            .invoke(
                service,
                &js_agent,
                &rsa_owner.did,
                Some(&caveats),
                Some(&expired),
            )
            .await;
        outcomes.push([not_ours, stale].map(|r| error_name(r.out()).map(str::to_string)));
    }
    assert_eq!(
        outcomes[0],
        [
            Some("Unauthorized".to_string()),
            Some("Unauthorized".to_string())
        ]
    );
    assert_eq!(outcomes[0], outcomes[1], "Rust and JS servers agree");
    for service in servers {
        service.stop().await;
    }
}

/// The fixture JS client (`client.js`, @ucanto/client with nb `{text}`) runs
/// every scenario against our CLI server and against the JS harness-style
/// server: same outcome and same error message (service DID and invocation CID aside), and our
/// receipts verify. The `test/echo` of the contract takes `{echo}`, so `ok`
/// and `delegated` are refused by both with the same schema error.
#[tokio::test(flavor = "multi_thread")]
async fn js_client_scenarios_match_on_cli_and_js_servers() {
    let ours = Peer::Rust.start_service().await;
    let theirs = Peer::Js.start_service().await;
    for scenario in etracker_e2e::CLIENT_SCENARIOS {
        let mut results = Vec::new();
        for service in [&ours, &theirs] {
            let (code, stdout) = run_js(
                "client.js",
                &[
                    "--url",
                    &service.url,
                    "--service-did",
                    service.id.as_str(),
                    "--scenario",
                    scenario,
                ],
            )
            .await;
            assert_eq!(code, 0, "{scenario}: {stdout}");
            let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
            assert_eq!(result["signatureValid"], true, "{scenario}: {result}");
            assert_eq!(result["issuer"], service.id.as_str(), "{scenario}");
            assert_eq!(result["ran"], result["invocation"], "{scenario}");
            let error = &result["out"]["error"];
            let message = error["message"]
                .as_str()
                .unwrap_or("")
                .replace(service.id.as_str(), "<service>")
                .replace(result["invocation"].as_str().unwrap(), "<invocation>");
            results.push((error["name"].clone(), message));
        }
        assert_eq!(results[0], results[1], "{scenario}: ours vs JS");
        assert!(
            results[0].0.is_string(),
            "{scenario} is refused: {:?}",
            results[0]
        );
    }
    ours.stop().await;
    theirs.stop().await;
}

/// Our CLI invokes the fixture JS echo server (`nb {text}`) with the fixed RSA
/// key of fixtures/rsa and, as proof, the delegation JS made to that key
/// (alice → RSA); and, in one message, three abilities (`--receipts` output).
#[tokio::test(flavor = "multi_thread")]
async fn cli_invokes_fixture_js_server_with_js_delegation() {
    let js = spawn_js("echo-server.js", &[]).await;
    let url = js.hello["url"].as_str().unwrap().to_string();
    let service_did = js.hello["did"].as_str().unwrap().to_string();
    let rsa_key = std::fs::read_to_string(fixture("rsa/private-key.txt")).unwrap();
    let proof = m(&std::fs::read(fixture("rsa/alice-to-rsa-delegation.archive.car")).unwrap());
    let alice_did = alice().did().to_string();

    let args = [
        "invoke",
        "--url",
        &url,
        "--issuer",
        rsa_key.trim(),
        "--audience",
        &service_did,
        "--resource",
        &alice_did,
        "--ability",
        "test/echo",
        "--caveats",
        r#"{"text":"rsa via js proof"}"#,
        "--proof",
        &proof,
        "--receipts",
    ];
    let out = Peer::Rust.run(&args).await;
    let Ipld::List(receipts) = field(&out, "receipts") else {
        panic!("{out:?}")
    };
    assert_eq!(
        field(&receipts[0], "out"),
        &Ipld::Map(IpldMap::from([(
            "ok".into(),
            nb(&[("text", "rsa via js proof")])
        )]))
    );
    assert_eq!(string(field(&receipts[0], "issuer")), service_did);

    // Alice's key in plain base64 (no multibase prefix) works too; one
    // invocation per --ability, receipts in that order.
    let alice_key = base64(&alice().encode());
    let args = [
        "invoke",
        "--url",
        &url,
        "--issuer",
        &alice_key,
        "--audience",
        &service_did,
        "--resource",
        &alice_did,
        "--ability",
        "test/echo",
        "--ability",
        "test/fail",
        "--ability",
        "test/unknown",
        "--caveats",
        r#"{"text":"hi"}"#,
        "--receipts",
    ];
    let out = Peer::Rust.run(&args).await;
    let Ipld::List(receipts) = field(&out, "receipts") else {
        panic!("{out:?}")
    };
    let names: Vec<String> = receipts
        .iter()
        .map(|r| match field(r, "out") {
            Ipld::Map(out) if out.contains_key("ok") => "ok".to_string(),
            out => string(field(field(out, "error"), "name")),
        })
        .collect();
    assert_eq!(names, ["ok", "HandlerExecutionError", "HandlerNotFound"]);
}

/// Every RSA invocation JS signed (fixtures/rsa) gets from our server the
/// result the JS server gave it.
#[tokio::test(flavor = "multi_thread")]
async fn rsa_fixture_invocations_run_on_rust_server_as_on_js() {
    let vectors: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("rsa/vectors.json")).unwrap()).unwrap();
    let server = echo_server(Arc::new(service()));
    let mut ran = 0;
    for entry in vectors["vectors"].as_array().unwrap() {
        let Some(expected) = entry.get("jsServerOut") else {
            continue;
        };
        let archive = std::fs::read(fixture(&format!(
            "rsa/{}",
            entry["archive"].as_str().unwrap()
        )))
        .unwrap();
        let invocation = Delegation::extract(&archive).unwrap();
        let receipt = server.run(invocation).await.unwrap();
        let out = match receipt.out() {
            Ok(v) => Ipld::Map(IpldMap::from([("ok".into(), v.clone())])),
            Err(e) => Ipld::Map(IpldMap::from([("error".into(), e.clone())])),
        };
        let expected = ucanto::dag_json::from_json(expected).unwrap();
        assert_eq!(out, expected, "{}", entry["name"]);
        ran += 1;
    }
    assert_eq!(ran, 3);
}

/// Failures: nothing on stdout, a reason on stderr, exit 1 (2 for usage).
#[tokio::test(flavor = "multi_thread")]
async fn cli_reports_bad_input() {
    let service = Peer::Rust.start_service().await;
    let key = Peer::Rust.key_gen("ed25519").await;
    let (issuer, did) = (key.arg(), key.did.to_string());
    let url_404 = format!("{}/nowhere", service.url);
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["key", "gen", "--type", "dsa"], 2, "invalid value"),
        (vec!["invoke", "--url", &service.url], 2, "required"),
        (
            vec![
                "invoke",
                "--url",
                &service.url,
                "--issuer",
                "Mnope",
                "--audience",
                service.id.as_str(),
                "--resource",
                &did,
                "--ability",
                "test/echo",
            ],
            1,
            "--issuer",
        ),
        (
            vec![
                "invoke",
                "--url",
                &service.url,
                "--issuer",
                &issuer,
                "--audience",
                "did:nope",
                "--resource",
                &did,
                "--ability",
                "test/echo",
            ],
            1,
            "--audience",
        ),
        (
            vec![
                "invoke",
                "--url",
                &service.url,
                "--issuer",
                &issuer,
                "--audience",
                service.id.as_str(),
                "--resource",
                &did,
                "--ability",
                "test/echo",
                "--caveats",
                "[1]",
            ],
            1,
            "--caveats must be a dag-json map",
        ),
        (
            vec![
                "invoke",
                "--url",
                &service.url,
                "--issuer",
                &issuer,
                "--audience",
                service.id.as_str(),
                "--resource",
                &did,
                "--ability",
                "test/echo",
                "--proof",
                &issuer,
            ],
            1,
            "--proof",
        ),
        (
            vec![
                "invoke",
                "--url",
                &url_404,
                "--issuer",
                &issuer,
                "--audience",
                service.id.as_str(),
                "--resource",
                &did,
                "--ability",
                "test/echo",
            ],
            1,
            "404",
        ),
        (
            vec![
                "delegation",
                "create",
                "--issuer",
                &issuer,
                "--audience",
                &did,
                "--resource",
                "not-a-did",
                "--ability",
                "test/echo",
            ],
            1,
            "--resource",
        ),
    ];
    for (args, code, needle) in cases {
        let out = Peer::Rust.output(&args).await;
        assert_eq!(out.code, code, "{args:?}: {}", out.stderr);
        assert_eq!(out.stdout, "", "{args:?}");
        assert!(out.stderr.contains(needle), "{args:?}: {:?}", out.stderr);
    }
    service.stop().await;
}

/// The server also stops on SIGTERM (exit 0), and after `/shutdown` it no
/// longer accepts connections; `--key` gives it a fixed identity, RSA too.
#[tokio::test(flavor = "multi_thread")]
async fn server_stops_on_sigterm_and_after_shutdown() {
    let rsa = std::fs::read_to_string(fixture("rsa/private-key.txt")).unwrap();
    let rsa_did = RsaSigner::parse(&rsa).unwrap().did().clone();
    let mut child = Command::new(ucanto_bin())
        .args(["server", "start", "--key", rsa.trim()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().unwrap();
    let hello = ucanto::dag_json::decode(&line).unwrap();
    assert_eq!(string(field(&hello, "id")), rsa_did.as_str());
    // An RSA-signed service answers an invocation with an RS256 receipt.
    let service = Service {
        child,
        id: rsa_did,
        url: string(field(&hello, "url")),
    };
    let alice_key = Key {
        did: alice().did().clone(),
        bytes: alice().encode(),
    };
    let caveats = nb(&[("echo", "from an rsa service")]);
    let receipt = Peer::Js
        .invoke(&service, &alice_key, &alice_key.did, Some(&caveats), None)
        .await;
    assert_eq!(ok_out(&receipt), &caveats);
    let mut child = service.child;
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let status = tokio::time::timeout(TIMEOUT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");

    let service = Peer::Rust.start_service().await;
    let url = service.url.clone();
    service.stop().await;
    let host = url.trim_start_matches("http://").to_string();
    assert!(tokio::net::TcpStream::connect(host).await.is_err());
}

/// Every JSON output key is sorted as dag-json requires (the harness parses
/// with @ipld/dag-json), checked on a raw `invoke` line.
#[tokio::test(flavor = "multi_thread")]
async fn invoke_output_is_canonical_dag_json() {
    let service = Peer::Rust.start_service().await;
    let key = Peer::Rust.key_gen("ed25519").await;
    let out = Peer::Rust
        .output(&[
            "invoke",
            "--url",
            &service.url,
            "--issuer",
            &key.arg(),
            "--audience",
            service.id.as_str(),
            "--resource",
            key.did.as_str(),
            "--ability",
            "test/echo",
            "--caveats",
            r#"{"echo":"x"}"#,
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let value = ucanto::dag_json::decode(out.stdout.trim()).unwrap();
    assert_eq!(
        ucanto::dag_json::to_string(&value).unwrap(),
        out.stdout.trim()
    );
    let headers: BTreeMap<String, Ipld> = match field(&value, "headers") {
        Ipld::Map(h) => h.clone(),
        _ => unreachable!(),
    };
    assert!(headers
        .keys()
        .all(|k| k.chars().all(|c| !c.is_ascii_uppercase())));
    service.stop().await;
}
