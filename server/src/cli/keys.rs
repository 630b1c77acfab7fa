//! `etracker key gen`, `etracker delegate`, and how every command finds the
//! service's key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use etracker_capabilities::{Ability, Conclude, Track};
use ucanto::cli::{explain, BoxError};
use ucanto::principal::{Did, Ed25519Signer, Signer};
use ucanto::ucan::Delegation;

#[derive(Subcommand)]
pub(crate) enum KeyCommand {
    /// Generate an ed25519 key; prints its DID and its "M…" private key.
    Gen,
}

#[derive(Args)]
pub(crate) struct KeyArgs {
    /// Private key ("M…" multibase, as upstream).
    #[arg(long, env = "ETRACKER_PRIVATE_KEY", hide_env_values = true)]
    private_key: Option<String>,
    /// File holding the private key; created with a fresh key if absent.
    #[arg(long, env = "ETRACKER_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Present the service under this DID (e.g. did:web:tracker.example).
    #[arg(long, env = "ETRACKER_DID")]
    did: Option<String>,
    /// Data directory (holds the store, and the key file by default).
    #[arg(long, env = "ETRACKER_DATA_DIR", default_value = "etracker-data")]
    pub(crate) data_dir: PathBuf,
}

#[derive(Args)]
pub(crate) struct DelegateArgs {
    /// The DID of the node (or consolidator) to authorize.
    node: String,
    /// The ability to delegate.
    #[arg(long, default_value = "space/egress/track")]
    ability: String,
    #[command(flatten)]
    key: KeyArgs,
}

/// `etracker key gen`: a fresh key, as one JSON line.
pub(crate) fn key(command: KeyCommand) -> Result<(), BoxError> {
    match command {
        KeyCommand::Gen => {
            let key = Ed25519Signer::generate();
            println!("{{\"did\":\"{}\",\"key\":\"{}\"}}", key.did(), key.format());
            Ok(())
        }
    }
}

/// `etracker delegate`: the delegation, archived, in multibase.
pub(crate) fn delegate(args: DelegateArgs) -> Result<(), BoxError> {
    let signer = load_signer(&args.key)?;
    let node: Did = args
        .node
        .parse()
        .map_err(|e: ucanto::principal::PrincipalError| {
            explain(
                format!("{:?} is not a DID", args.node),
                "A node's DID looks like did:key:z6Mk…; its operator gets it from its key.",
            )(e)
        })?;
    let capability = match args.ability.as_str() {
        "space/egress/track" => Track::unrestricted(signer.did()),
        "space/egress/conclude" => Conclude::unrestricted(signer.did()),
        other => {
            return Err(format!(
                "cannot delegate {other:?}: space/egress/track or space/egress/conclude"
            )
            .into())
        }
    };
    let delegation = Delegation::builder(signer.as_ref(), node)
        .capability(capability)
        .no_expiration()
        .build()?;
    println!(
        "{}",
        multibase::encode(multibase::Base::Base64, delegation.archive()?)
    );
    Ok(())
}

/// The key from the flag/env, else the key file (generated and persisted on first use).
pub(crate) fn load_signer(args: &KeyArgs) -> Result<Arc<dyn Signer>, BoxError> {
    let key = match &args.private_key {
        Some(text) => Ed25519Signer::parse(text).map_err(|e| {
            explain(
                "ETRACKER_PRIVATE_KEY is not an ed25519 private key in the \"M…\" format",
                "`etracker key gen` makes one; or unset it to use the key file.",
            )(e)
        })?,
        None => {
            let path = args
                .key_file
                .clone()
                .unwrap_or_else(|| args.data_dir.join("etracker.key"));
            load_or_create_key(&path).map_err(explain(
                format!("cannot load the key file {}", path.display()),
                "It holds an \"M…\" key (`etracker key gen`); remove it to generate a new one.",
            ))?
        }
    };
    Ok(match &args.did {
        Some(did) => Arc::new(key.with_did(did.parse().map_err(
            |e: ucanto::principal::PrincipalError| {
                explain(
                    format!("ETRACKER_DID {did:?} is not a DID"),
                    "Present the service as e.g. did:web:tracker.example.",
                )(e)
            },
        )?)),
        None => Arc::new(key),
    })
}

fn load_or_create_key(path: &Path) -> Result<Ed25519Signer, BoxError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Ed25519Signer::parse(&text)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Ed25519Signer::generate();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            write_private(path, &key.format())?;
            tracing::info!(path = %path.display(), did = %key.did(), "generated a new service key");
            Ok(key)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}
