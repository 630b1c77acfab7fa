//! `ucanto`: a command-line ucanto peer, following the CLI contract of the
//! cross-implementation harness storacha-network/ucanto-compat, so this crate
//! can be tested against JS and Go ucanto (and used by hand).
//!
//! Every command prints one line of dag-json on stdout and nothing else;
//! failures go to stderr with exit status 1 (2 for bad arguments).
//!
//! # Commands
//! ```text
//! ucanto key gen [--type ed25519|rsa]
//!   → {"id": "did:key:…", "key": {"/": {"bytes": "<private key bytes>"}}}
//! ucanto server start [--port N] [--host IP] [--key M…]
//!   → {"id": "did:key:…", "url": "http://127.0.0.1:PORT"}   (then serves until stopped)
//! ucanto delegation create --issuer M… --audience DID --resource DID --ability CAN…
//!                          [--expiration SECS] [--proof M…]…
//!   → {"delegation": {"/": {"bytes": "<CAR archive>"}}}
//! ucanto invoke --url URL --issuer M… --audience DID --resource DID --ability CAN…
//!               [--caveats DAG-JSON] [--proof M…]… [--receipts]
//!   → {"body": {"/": {"bytes": "<CAR response>"}}, "headers": {"content-type": "…", …}}
//! ```
//! Private keys (`--issuer`, `--key`) and proofs (`--proof`) are multibase
//! base64pad (`M…`, as JS `base64pad.encode`), or plain base64. A key's bytes
//! are those `key gen` prints: `varint(0x1300) ‖ seed ‖ varint(0xed) ‖ public`
//! for ed25519, `varint(0x1305) ‖ PKCS#1 DER` for RSA — JS
//! `signer.toArchive().keys[did]`. A proof is a delegation archive, as
//! `delegation create` prints and JS `delegation.archive()` makes.
//!
//! The server answers ucanto requests at `POST /` and implements `test/echo`
//! (`with`: a did:key, `nb`: `{echo: string}`, ok: `{echo}`). It accepts an
//! invocation that is self-issued on the resource or proven by a delegation
//! chain from it. `POST /shutdown` answers 202 Accepted and stops the server;
//! so do SIGTERM and SIGINT.

use std::error::Error;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use clap::{Parser, Subcommand, ValueEnum};
use ucanto::dag::{Ipld, IpldMap};
use ucanto::message::AgentMessage;
use ucanto::principal::{decode_signer, Did, Ed25519Signer, RsaSigner, Signer};
use ucanto::server::{HandlerError, Request, Response, Server};
use ucanto::transport::{router, CAR_CONTENT_TYPE, DEFAULT_BODY_LIMIT};
use ucanto::ucan::{Capability, Delegation};
use ucanto::validator::{schema, CapabilityParser, Violation};

type Result<T, E = Box<dyn Error + Send + Sync>> = std::result::Result<T, E>;

/// How long the server lets open connections finish once told to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(
    name = "ucanto",
    version,
    about = "A ucanto peer: keys, delegations, invocations and a test/echo server",
    long_about = "A ucanto peer: keys, delegations, invocations and a test/echo server.\n\n\
        Speaks the CLI contract of storacha-network/ucanto-compat: every command prints \
        one dag-json line on stdout."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Private keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// A ucanto server with the `test/echo` capability.
    #[command(subcommand)]
    Server(ServerCommand),
    /// Delegations.
    #[command(subcommand)]
    Delegation(DelegationCommand),
    /// Issue an invocation to a service and print its HTTP response.
    Invoke(InvokeArgs),
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Generate a private key; prints {"id": DID, "key": bytes}.
    Gen {
        /// Key type to generate.
        #[arg(long = "type", value_enum, ignore_case = true, default_value_t = KeyType::Ed25519)]
        key_type: KeyType,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum KeyType {
    /// Ed25519 (EdDSA signatures).
    Ed25519,
    /// RSA 2048-bit (RS256 signatures).
    Rsa,
}

#[derive(Subcommand)]
enum ServerCommand {
    /// Start a server; prints {"id": DID, "url": URL} and serves until
    /// `POST /shutdown`, SIGTERM or SIGINT.
    Start {
        /// Port to listen on (0 picks a free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Address to listen on.
        #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
        host: IpAddr,
        /// Private key of the service (M…); a fresh ed25519 key by default.
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Subcommand)]
enum DelegationCommand {
    /// Create a delegation; prints {"delegation": bytes of its CAR archive}.
    Create {
        /// Private key of the issuer (M…).
        #[arg(long)]
        issuer: String,
        /// DID of the recipient.
        #[arg(long)]
        audience: String,
        /// DID of the resource the delegation applies to.
        #[arg(long)]
        resource: String,
        /// Ability to delegate (repeat for several).
        #[arg(long, required = true)]
        ability: Vec<String>,
        /// Expiry, in seconds since the Unix epoch (default: never expires).
        #[arg(long)]
        expiration: Option<u64>,
        /// Delegation archive (M…) to include as a proof (repeatable).
        #[arg(long)]
        proof: Vec<String>,
    },
}

#[derive(clap::Args)]
struct InvokeArgs {
    /// Service URL.
    #[arg(long)]
    url: String,
    /// Private key of the issuer (M…).
    #[arg(long)]
    issuer: String,
    /// DID of the recipient (typically the service DID).
    #[arg(long)]
    audience: String,
    /// DID of the resource the invocation applies to.
    #[arg(long)]
    resource: String,
    /// Ability to invoke; repeat to send one invocation per ability in one message.
    #[arg(long, required = true)]
    ability: Vec<String>,
    /// Caveats (`nb`) of the invocation, as a dag-json map.
    #[arg(long)]
    caveats: Option<String>,
    /// Delegation archive (M…) to include as a proof (repeatable).
    #[arg(long)]
    proof: Vec<String>,
    /// Print the decoded receipts ({"receipts": [{ran, out, issuer, receipt}]})
    /// instead of the raw HTTP response.
    #[arg(long)]
    receipts: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Key(KeyCommand::Gen { key_type }) => key_gen(key_type),
        Command::Server(ServerCommand::Start { port, host, key }) => {
            server_start(SocketAddr::new(host, port), key).await
        }
        Command::Delegation(DelegationCommand::Create {
            issuer,
            audience,
            resource,
            ability,
            expiration,
            proof,
        }) => delegation_create(&issuer, &audience, &resource, &ability, expiration, &proof),
        Command::Invoke(args) => invoke(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ucanto: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints `value` as one dag-json line.
fn print(value: Ipld) -> Result<()> {
    println!("{}", ucanto::dag_json::to_string(&value)?);
    Ok(())
}

fn map<const N: usize>(entries: [(&str, Ipld); N]) -> Ipld {
    Ipld::Map(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// The byte strings `text` may stand for: its multibase decoding (`M…` is
/// base64pad) and its plain base64 decoding, in that order. Both are tried
/// because plain base64 may start with a character that names a multibase.
fn decodings(text: &str) -> Vec<Vec<u8>> {
    let text = text.trim();
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
    ];
    multibase::decode(text)
        .ok()
        .map(|(_, bytes)| bytes)
        .into_iter()
        .chain(engines.iter().find_map(|e| e.decode(text).ok()))
        .collect()
}

/// The first decoding of `text` that `decode` accepts, or its first error.
fn decode_with<T, E: std::fmt::Display>(
    what: &str,
    text: &str,
    decode: impl Fn(&[u8]) -> Result<T, E>,
) -> Result<T> {
    let mut first_error = None;
    for bytes in decodings(text) {
        match decode(&bytes) {
            Ok(value) => return Ok(value),
            Err(e) => {
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    Err(match first_error {
        Some(e) => format!("{what}: {e}"),
        None => format!("{what}: neither multibase (M…) nor base64"),
    }
    .into())
}

/// A private key as `--issuer` / `--key` take it.
fn parse_key(what: &str, text: &str) -> Result<Arc<dyn Signer>> {
    decode_with(what, text, decode_signer)
}

fn parse_did(what: &str, text: &str) -> Result<Did> {
    Did::parse(text.trim()).map_err(|e| format!("{what}: {e}").into())
}

fn parse_proofs(proofs: &[String]) -> Result<Vec<Delegation>> {
    proofs
        .iter()
        .map(|text| decode_with("--proof", text, Delegation::extract))
        .collect()
}

fn key_gen(key_type: KeyType) -> Result<()> {
    let (id, key) = match key_type {
        KeyType::Ed25519 => {
            let signer = Ed25519Signer::generate();
            (signer.did().to_string(), signer.encode())
        }
        KeyType::Rsa => {
            let signer = RsaSigner::generate()?;
            (signer.did().to_string(), signer.encode())
        }
    };
    print(map([("id", Ipld::String(id)), ("key", Ipld::Bytes(key))]))
}

fn delegation_create(
    issuer: &str,
    audience: &str,
    resource: &str,
    abilities: &[String],
    expiration: Option<u64>,
    proofs: &[String],
) -> Result<()> {
    let issuer = parse_key("--issuer", issuer)?;
    let audience = parse_did("--audience", audience)?;
    let resource = parse_did("--resource", resource)?;
    let mut builder = Delegation::builder(issuer.as_ref(), audience);
    for ability in abilities {
        builder = builder.capability(Capability::new(ability.as_str(), resource.as_str()));
    }
    builder = match expiration {
        Some(exp) => builder.expiration(exp),
        None => builder.no_expiration(),
    };
    for proof in parse_proofs(proofs)? {
        builder = builder.proof(proof);
    }
    let delegation = builder.build()?;
    print(map([("delegation", Ipld::Bytes(delegation.archive()?))]))
}

async fn invoke(args: InvokeArgs) -> Result<()> {
    let issuer = parse_key("--issuer", &args.issuer)?;
    let audience = parse_did("--audience", &args.audience)?;
    let resource = parse_did("--resource", &args.resource)?;
    let nb = match &args.caveats {
        None => None,
        Some(text) => match ucanto::dag_json::decode(text) {
            Ok(Ipld::Map(nb)) => Some(nb),
            Ok(_) => return Err("--caveats must be a dag-json map".into()),
            Err(e) => return Err(format!("--caveats: {e}").into()),
        },
    };
    let proofs = parse_proofs(&args.proof)?;
    let invocations = args
        .ability
        .iter()
        .map(|ability| {
            let mut capability = Capability::new(ability.as_str(), resource.as_str());
            if let Some(nb) = &nb {
                capability = capability.with_nb(nb.clone());
            }
            let mut builder =
                Delegation::builder(issuer.as_ref(), audience.clone()).capability(capability);
            for proof in &proofs {
                builder = builder.proof(proof.clone());
            }
            builder.build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let request = AgentMessage::build(&invocations, &[])?;

    let response = reqwest::Client::new()
        .post(&args.url)
        .header(reqwest::header::CONTENT_TYPE, CAR_CONTENT_TYPE)
        .header(reqwest::header::ACCEPT, CAR_CONTENT_TYPE)
        .body(request.to_car())
        .send()
        .await
        .map_err(|e| format!("POST {}: {e}", args.url))?;
    let status = response.status();
    let mut headers = IpldMap::new();
    for (name, value) in response.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_string())
            .and_modify(|v| {
                if let Ipld::String(joined) = v {
                    joined.push_str(", ");
                    joined.push_str(&value);
                }
            })
            .or_insert(Ipld::String(value));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("POST {}: reading the response: {e}", args.url))?;
    if !status.is_success() {
        return Err(format!(
            "POST {} → {status}: {}",
            args.url,
            String::from_utf8_lossy(&body)
        )
        .into());
    }
    if args.receipts {
        return print_receipts(&body, &invocations);
    }
    print(map([
        ("body", Ipld::Bytes(body.to_vec())),
        ("headers", Ipld::Map(headers)),
    ]))
}

/// `--receipts`: the response's receipts for `invocations`, decoded.
fn print_receipts(body: &[u8], invocations: &[Delegation]) -> Result<()> {
    let message = AgentMessage::from_car(body)?;
    let mut receipts = Vec::new();
    for invocation in invocations {
        let receipt = message
            .receipt_for(&invocation.cid())
            .ok_or_else(|| format!("no receipt for invocation {}", invocation.cid()))??;
        let out = match receipt.out() {
            Ok(value) => map([("ok", value.clone())]),
            Err(value) => map([("error", value.clone())]),
        };
        receipts.push(map([
            ("ran", Ipld::Link(receipt.ran_cid())),
            ("out", out),
            (
                "issuer",
                receipt
                    .issuer()
                    .map_or(Ipld::Null, |did| Ipld::String(did.to_string())),
            ),
            ("receipt", Ipld::Link(receipt.cid())),
        ]));
    }
    print(map([("receipts", Ipld::List(receipts))]))
}

/// `test/echo` as the harness's services define it: `with` a did:key, `nb`
/// `{echo: string}` (other fields dropped, as JS `Schema.struct` does).
struct TestEcho;

impl CapabilityParser for TestEcho {
    fn can(&self) -> &str {
        "test/echo"
    }

    fn parse(&self, capability: &Capability) -> Result<Capability, Violation> {
        schema::did_method(&capability.with, Some("key"))?;
        let echo = schema::string_field(capability.nb.as_ref(), "echo")?;
        let nb = IpldMap::from([("echo".to_string(), Ipld::String(echo))]);
        Ok(Capability::new(capability.can.as_str(), capability.with.as_str()).with_nb(nb))
    }

    fn derives(&self, claimed: &Capability, delegated: &Capability) -> Result<(), Violation> {
        if claimed.with != delegated.with {
            return Err(format!(
                "Can not derive {} with {} from {}",
                claimed.can, claimed.with, delegated.with
            )
            .into());
        }
        let echo = |c: &Capability| c.nb.as_ref().and_then(|nb| nb.get("echo")).cloned();
        match (echo(claimed), echo(delegated)) {
            (claimed, Some(imposed)) if claimed.as_ref() != Some(&imposed) => Err(format!(
                "Constrain violation: '{}' violates imposed 'echo' constraint '{}'",
                text(claimed.as_ref()),
                text(Some(&imposed))
            )
            .into()),
            _ => Ok(()),
        }
    }
}

fn text(value: Option<&Ipld>) -> String {
    match value {
        Some(Ipld::String(s)) => s.clone(),
        Some(other) => ucanto::dag_json::to_string(other).unwrap_or_default(),
        None => "undefined".into(),
    }
}

/// The service: `test/echo` answers its caveats.
fn service(signer: Arc<dyn Signer>) -> Server {
    Server::builder(signer)
        .provide(Arc::new(TestEcho), |request: Request| async move {
            Ok::<_, HandlerError>(Response::ok(Ipld::Map(
                request.capability.nb.unwrap_or_default(),
            )))
        })
        .build()
}

async fn server_start(addr: SocketAddr, key: Option<String>) -> Result<()> {
    let signer: Arc<dyn Signer> = match key {
        Some(text) => parse_key("--key", &text)?,
        None => Arc::new(Ed25519Signer::generate()),
    };
    let did = signer.did().to_string();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stop = Arc::new(stop);
    let on_shutdown = stop.clone();
    let app = router(Arc::new(service(signer)), DEFAULT_BODY_LIMIT).route(
        "/shutdown",
        axum::routing::post(move || async move {
            // The 202 still goes out: graceful shutdown lets it finish.
            on_shutdown.send_replace(true);
            axum::http::StatusCode::ACCEPTED
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let host = match local.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    let url = format!("http://{}", SocketAddr::new(host, local.port()));
    print(map([("id", Ipld::String(did)), ("url", Ipld::String(url))]))?;

    tokio::spawn(async move {
        wait_for_signal().await;
        stop.send_replace(true);
    });
    let serve = axum::serve(listener, app).with_graceful_shutdown(stop_requested(stopped.clone()));
    tokio::select! {
        served = serve => served?,
        // Connections that will not close do not keep the process alive.
        () = async {
            stop_requested(stopped).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {}
    }
    Ok(())
}

async fn stop_requested(mut stopped: tokio::sync::watch::Receiver<bool>) {
    // An error means every sender is gone: nothing can ask to stop any more.
    if stopped.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo(with: &str, text: Option<&str>) -> Capability {
        let capability = Capability::new("test/echo", with);
        match text {
            Some(text) => capability.with_nb(IpldMap::from([(
                "echo".to_string(),
                Ipld::String(text.into()),
            )])),
            None => capability,
        }
    }

    /// `test/echo` parses and derives as the harness's JS service does.
    #[test]
    fn test_echo_follows_the_js_service() {
        let alice = Ed25519Signer::from_seed([1; 32]).did().to_string();
        let mut extra = echo(&alice, Some("hi"));
        extra
            .nb
            .as_mut()
            .unwrap()
            .insert("more".into(), Ipld::Integer(1));
        assert_eq!(TestEcho.parse(&extra), Ok(echo(&alice, Some("hi"))));
        assert_eq!(
            TestEcho.parse(&echo("did:web:example.com", Some("hi"))),
            Err("Expected a did:key: but got \"did:web:example.com\" instead".into())
        );
        assert!(TestEcho
            .parse(&echo(&alice, None))
            .unwrap_err()
            .message()
            .contains("Object contains invalid field \"echo\""));
        assert_eq!(
            TestEcho.derives(&echo(&alice, Some("a")), &echo(&alice, Some("b"))),
            Err("Constrain violation: 'a' violates imposed 'echo' constraint 'b'".into())
        );
        assert_eq!(
            TestEcho.derives(&echo(&alice, Some("a")), &echo("did:key:zOther", None)),
            Err(format!("Can not derive test/echo with {alice} from did:key:zOther").into())
        );
        assert_eq!(
            TestEcho.derives(&echo(&alice, Some("a")), &echo(&alice, None)),
            Ok(())
        );
    }

    /// Keys and proofs are read from multibase or plain base64.
    #[test]
    fn keys_read_from_multibase_or_base64() {
        let signer = Ed25519Signer::from_seed([2; 32]);
        let plain = base64::engine::general_purpose::STANDARD.encode(signer.encode());
        for text in [signer.format(), plain.clone(), format!(" {plain}\n")] {
            assert_eq!(parse_key("--issuer", &text).unwrap().did(), signer.did());
        }
        let err = parse_key("--issuer", "not a key!").unwrap_err().to_string();
        assert_eq!(err, "--issuer: neither multibase (M…) nor base64");
        let err = parse_key("--issuer", "Mabcd").unwrap_err().to_string();
        assert!(err.starts_with("--issuer: "), "{err}");
    }
}
