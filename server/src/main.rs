//! `etracker`: the egress tracker service and its admin commands.
//!
//! Every flag can also be set as an `ETRACKER_*` environment variable; see
//! `etracker <command> --help`. Each command lives in a module of `cli/`.

use clap::{Parser, Subcommand};
use ucanto::cli::{sentence, BoxError};

mod cli;

use cli::api::{ApiArgs, ConsolidateArgs, NodesArgs, StatementArgs, UsageArgs};
use cli::consolidator::ConsolidatorArgs;
use cli::keys::{DelegateArgs, KeyCommand};
use cli::space::SpaceCommand;
use cli::start::StartArgs;

#[derive(Parser)]
#[command(
    name = "etracker",
    version,
    about = "Egress tracker for a decentralized storage network, over UCAN/ucanto"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (embedded redb store; a key is generated on first start).
    Start(Box<StartArgs>),
    /// Key management.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Print a delegation that lets a node invoke space/egress/track.
    Delegate(DelegateArgs),
    /// Trigger consolidation on a running service.
    Consolidate(ConsolidateArgs),
    /// Run a separately deployed consolidator (the tracker invokes it over HTTP).
    Consolidator(Box<ConsolidatorArgs>),
    /// The registry of billable spaces (ETRACKER_SPACE_POLICY=known).
    Space {
        #[command(subcommand)]
        command: SpaceCommand,
    },
    /// The dashboard's overview from a running tracker: egress per day,
    /// counters, pending batches, rejections (one JSON object).
    Overview(ApiArgs),
    /// Every node paid, with its total and payout, one JSON object a line;
    /// or, given a DID, that node's egress per day and batches.
    Nodes(NodesArgs),
    /// Every space registered or with egress, with its customer, its egress
    /// over the last 30 days and its cost, one JSON object a line.
    Usage(UsageArgs),
    /// A UTC month's statement from a running tracker: each node's pay,
    /// each customer's bill, whether the month is final (JSON, or --csv).
    Statement(StatementArgs),
}

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(serve_cli()),
        Err(e) => {
            eprintln!("etracker: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// glibc gives every thread that allocates an arena of its own (up to 8
/// per core), and each arena keeps what was freed in it: with the threads
/// that check receipts and run store calls, the tracker's memory would be
/// the sum of their high-water marks. Two arenas keep it near what is in
/// use (one costs about 40% more CPU in lock contention). glibc reads the
/// limit from the environment when a process starts, so the tracker sets it
/// and starts again, unless the operator chose one. (Fixing the mmap and
/// trim thresholds at 128 KiB too took another MiB off every batch, and
/// cost 1–2% CPU in page faults: not done.)
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        use std::os::unix::process::CommandExt;
        let arenas = etracker_server::MALLOC_ARENA_MAX;
        let mut args = std::env::args_os();
        let mut again = std::process::Command::new("/proc/self/exe");
        if let Some(name) = args.next() {
            again.arg0(name);
        }
        // `exec` returns only when it failed: carry on as started.
        let error = again.args(args).env("MALLOC_ARENA_MAX", arenas).exec();
        eprintln!("etracker: cannot restart with MALLOC_ARENA_MAX={arenas} ({error}); going on");
    }
}

async fn serve_cli() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse().command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // A sentence, not a Debug dump.
        Err(error) => {
            eprintln!("etracker: {}", sentence(error.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), BoxError> {
    match command {
        Command::Start(args) => cli::start::start(*args).await,
        Command::Key { command } => cli::keys::key(command),
        Command::Delegate(args) => cli::keys::delegate(args),
        Command::Consolidator(args) => cli::consolidator::consolidator(*args).await,
        Command::Space { command } => cli::space::space(command).await,
        Command::Overview(api) => cli::api::overview(api).await,
        Command::Nodes(args) => cli::api::nodes(args).await,
        Command::Usage(args) => cli::api::usage(args).await,
        Command::Statement(args) => cli::api::statement(args).await,
        Command::Consolidate(args) => cli::api::consolidate(args).await,
    }
}
