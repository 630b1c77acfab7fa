//! `etracker space add|remove|list`: the registry of billable spaces.

use clap::{Args, Subcommand};
use etracker_server::service::space_json;
use etracker_server::store::{blocking, SpaceEntry, StoreError};
use ucanto::cli::BoxError;
use ucanto::principal::Did;

use super::api::ApiArgs;
use super::keys::{load_signer, KeyArgs};
use super::store::StoreArgs;

#[derive(Subcommand)]
pub(crate) enum SpaceCommand {
    /// Register spaces (prints each entry as a JSON line).
    Add {
        /// Space DIDs.
        #[arg(required = true)]
        spaces: Vec<String>,
        /// The provider that provisions them (default: this tracker).
        #[arg(long)]
        provider: Option<String>,
        /// The account they belong to (lets it read their egress).
        #[arg(long)]
        customer: Option<String>,
        #[command(flatten)]
        access: RegistryAccess,
    },
    /// Unregister spaces.
    Remove {
        /// Space DIDs.
        #[arg(required = true)]
        spaces: Vec<String>,
        #[command(flatten)]
        access: RegistryAccess,
    },
    /// List the registered spaces, one JSON object a line.
    List {
        #[command(flatten)]
        access: RegistryAccess,
    },
}

/// How `etracker space` reaches the registry: the store in the data
/// directory, or, while a tracker holds it, that tracker's admin API.
#[derive(Args)]
pub(crate) struct RegistryAccess {
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    store: StoreArgs,
    // The running service, used when it holds the data directory.
    #[command(flatten)]
    api: ApiArgs,
}

/// `etracker space …`: on the store when it can be opened, else (a tracker
/// holds the data directory) through that tracker's admin API.
pub(crate) async fn space(command: SpaceCommand) -> Result<(), BoxError> {
    let access = match &command {
        SpaceCommand::Add { access, .. }
        | SpaceCommand::Remove { access, .. }
        | SpaceCommand::List { access } => access,
    };
    let data_dir = &access.key.data_dir;
    let store = match access.store.open(data_dir).await {
        Ok(store) => Some(store),
        // A running tracker holds the store: go through its API.
        Err(e)
            if matches!(
                e.downcast_ref::<StoreError>(),
                Some(StoreError::InUse { .. })
            ) =>
        {
            None
        }
        Err(e) => return Err(e),
    };
    let api = &access.api.in_data_dir(data_dir);
    let admin = |method: reqwest::Method, path: String, body: Option<String>| {
        let mut request = api.request(method, &format!("/admin/spaces{path}"));
        if let Some(body) = body {
            request = request.body(body);
        }
        async move {
            let (status, text) = api
                .send(
                    request,
                    "The data directory is in use, so a tracker should be running: set --url or ETRACKER_URL to it.",
                )
                .await?;
            if !status.is_success() {
                return Err::<String, BoxError>(format!("HTTP {status}: {text}").into());
            }
            Ok(text)
        }
    };
    match &command {
        SpaceCommand::Add {
            spaces,
            provider,
            customer,
            ..
        } => {
            let spaces: Vec<Did> = spaces.iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
            let provider: Option<Did> = provider.as_deref().map(str::parse).transpose()?;
            let customer: Option<Did> = customer.as_deref().map(str::parse).transpose()?;
            match &store {
                Some(store) => {
                    // All in one commit: registering many spaces stays fast.
                    let provider = match provider {
                        Some(provider) => provider,
                        None => load_signer(&access.key)?.did().clone(),
                    };
                    let entries: Vec<SpaceEntry> = spaces
                        .into_iter()
                        .map(|space| SpaceEntry {
                            space,
                            provider: provider.clone(),
                            customer: customer.clone(),
                        })
                        .collect();
                    let put = entries.clone();
                    blocking(store.clone(), move |s| s.put_spaces(&put)).await?;
                    for entry in &entries {
                        println!("{}", space_json(entry));
                    }
                }
                None => {
                    let mut body = serde_json::Map::new();
                    if let Some(provider) = provider {
                        body.insert("provider".into(), provider.as_str().into());
                    }
                    if let Some(customer) = customer {
                        body.insert("customer".into(), customer.as_str().into());
                    }
                    let body = serde_json::Value::Object(body).to_string();
                    for space in spaces {
                        let path = format!("/{space}");
                        print!(
                            "{}",
                            admin(reqwest::Method::PUT, path, Some(body.clone())).await?
                        );
                    }
                }
            }
        }
        SpaceCommand::Remove { spaces, .. } => {
            for space in spaces {
                let space: Did = space.parse()?;
                match &store {
                    Some(store) => {
                        let gone = space.clone();
                        let removed =
                            blocking(store.clone(), move |s| s.remove_space(&gone)).await?;
                        println!(
                            "{}",
                            serde_json::json!({"space": space.as_str(), "removed": removed})
                        );
                    }
                    None => {
                        let path = format!("/{space}");
                        print!("{}", admin(reqwest::Method::DELETE, path, None).await?);
                    }
                }
            }
        }
        SpaceCommand::List { .. } => match &store {
            Some(store) => {
                for entry in blocking(store.clone(), |s| s.spaces()).await? {
                    println!("{}", space_json(&entry));
                }
            }
            None => print!(
                "{}",
                admin(reqwest::Method::GET, String::new(), None).await?
            ),
        },
    }
    Ok(())
}
