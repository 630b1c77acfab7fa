//! The commands that ask a running tracker over HTTP: the dashboard's
//! `overview`, `nodes` and `usage`, and `consolidate --now`.

use clap::Args;
use etracker_server::admin::csv as admin_csv;
use ucanto::cli::{explain, BoxError};
use ucanto::principal::Did;

/// A running tracker, reached over HTTP with its admin token.
#[derive(Args)]
pub(crate) struct ApiArgs {
    /// The running service.
    #[arg(long, env = "ETRACKER_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The service's admin token. Unset: the one in --admin-token-file.
    #[arg(long, env = "ETRACKER_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// The file `etracker start` keeps its token in (default:
    /// `$ETRACKER_DATA_DIR/admin.token`, else `etracker-data/admin.token`).
    #[arg(long, env = "ETRACKER_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<std::path::PathBuf>,
}

/// What to check when `etracker start` cannot be reached.
const IS_IT_RUNNING: &str = "Is `etracker start` running there? Set --url or ETRACKER_URL.";

impl ApiArgs {
    /// These arguments, with `<data_dir>/admin.token` as the token file
    /// when none is named (a command that has the data directory).
    pub(crate) fn in_data_dir(&self, data_dir: &std::path::Path) -> ApiArgs {
        ApiArgs {
            url: self.url.clone(),
            admin_token: self.admin_token.clone(),
            admin_token_file: self
                .admin_token_file
                .clone()
                .or_else(|| Some(data_dir.join(super::token::TOKEN_FILE))),
        }
    }

    /// A request of `method` to `<url><path>`, with the token.
    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let request = reqwest::Client::new().request(method, url);
        let token = super::token::for_client(
            self.admin_token.as_deref(),
            self.admin_token_file.as_deref(),
        );
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request`: its status and body; `hint` says what to check
    /// when the tracker cannot be reached.
    pub(crate) async fn send(
        &self,
        request: reqwest::RequestBuilder,
        hint: &str,
    ) -> Result<(reqwest::StatusCode, String), BoxError> {
        let response = request
            .send()
            .await
            .map_err(|e| explain(format!("cannot reach the tracker at {}", self.url), hint)(e))?;
        let status = response.status();
        Ok((status, response.text().await?))
    }

    /// `GET /admin/api/<path>` with `query`, as JSON.
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<serde_json::Value, BoxError> {
        let path = format!("/admin/api/{path}");
        let request = self.request(reqwest::Method::GET, &path).query(query);
        let (status, body) = self.send(request, IS_IT_RUNNING).await?;
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(
                "the tracker refused: set ETRACKER_ADMIN_TOKEN to its admin token, or run this where its data directory's admin.token is (--admin-token-file)"
                    .into(),
            );
        }
        if !status.is_success() {
            let url = format!("{}{path}", self.url.trim_end_matches('/'));
            return Err(format!("HTTP {status} from {url}: {body}").into());
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// Prints every row of the listing at `path` (the array `rows` of each
    /// page) as `line` makes it, following the pages' `next` cursor.
    async fn print_all(
        &self,
        path: &str,
        rows: &str,
        filters: &[(&str, &str)],
        line: impl Fn(&serde_json::Value) -> String,
    ) -> Result<(), BoxError> {
        let mut after: Option<String> = None;
        loop {
            let mut query = filters.to_vec();
            if let Some(after) = &after {
                query.push(("after", after));
            }
            let page = self.get(path, &query).await?;
            for row in page[rows].as_array().into_iter().flatten() {
                print!("{}", line(row));
            }
            match page["next"].as_str() {
                Some(next) if Some(next) != after.as_deref() => after = Some(next.to_string()),
                _ => return Ok(()),
            }
        }
    }
}

// The arguments of `etracker nodes` (its help is the command's doc in main.rs).
#[derive(Args)]
pub(crate) struct NodesArgs {
    /// One node: its page of the dashboard, as JSON.
    node: Option<String>,
    /// Only nodes whose DID starts with this.
    #[arg(long, default_value = "")]
    prefix: String,
    /// CSV (node, total_bytes, payout_usd), as the dashboard exports.
    #[arg(long)]
    csv: bool,
    #[command(flatten)]
    api: ApiArgs,
}

// The arguments of `etracker usage`.
#[derive(Args)]
pub(crate) struct UsageArgs {
    /// Only spaces whose DID starts with this.
    #[arg(long, default_value = "")]
    prefix: String,
    /// CSV, one row per space and day (space, customer, day, bytes,
    /// cost_usd), as the dashboard exports.
    #[arg(long)]
    csv: bool,
    /// Only the spaces of this customer (their bill: the rows add up).
    #[arg(long, default_value = "")]
    customer: String,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
pub(crate) struct ConsolidateArgs {
    /// Run now (required: scheduled runs happen by themselves).
    #[arg(long)]
    now: bool,
    #[command(flatten)]
    api: ApiArgs,
}

/// `etracker overview`: one JSON object, pretty-printed.
pub(crate) async fn overview(api: ApiArgs) -> Result<(), BoxError> {
    let overview = api.get("overview", &[]).await?;
    println!("{}", serde_json::to_string_pretty(&overview)?);
    Ok(())
}

/// `etracker nodes [DID]`: one node's page, or every node a line (or CSV).
pub(crate) async fn nodes(args: NodesArgs) -> Result<(), BoxError> {
    let NodesArgs {
        node,
        prefix,
        csv,
        api,
    } = args;
    if let Some(node) = node {
        let node: Did = node
            .parse()
            .map_err(|e: ucanto::principal::PrincipalError| {
                explain(
                    format!("{node:?} is not a DID"),
                    "A node's DID looks like did:key:z6Mk…; `etracker nodes` lists them all.",
                )(e)
            })?;
        let page = api.get(&format!("nodes/{node}"), &[]).await?;
        println!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(());
    }
    if csv {
        print!("{}", admin_csv::NODES_HEADER);
    }
    api.print_all("nodes", "nodes", &[("q", &prefix)], |node| match csv {
        true => admin_csv::node_row(
            node["node"].as_str().unwrap_or_default(),
            node["total_bytes"].as_u64().unwrap_or_default(),
            node["payout_usd"].as_f64(),
        ),
        false => format!("{node}\n"),
    })
    .await
}

/// `etracker usage`: every space a line, or its days as CSV rows.
pub(crate) async fn usage(args: UsageArgs) -> Result<(), BoxError> {
    let UsageArgs {
        prefix,
        csv,
        customer,
        api,
    } = args;
    if csv {
        print!("{}", admin_csv::SPACES_HEADER);
    }
    let filters = [("q", prefix.as_str()), ("customer", customer.as_str())];
    api.print_all("usage", "spaces", &filters, |space| match csv {
        true => space["egress_by_day"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|day| {
                admin_csv::space_row(
                    space["space"].as_str().unwrap_or_default(),
                    space["customer"].as_str(),
                    day["day"].as_str().unwrap_or_default(),
                    day["bytes"].as_u64().unwrap_or_default(),
                    day["cost_usd"].as_f64(),
                )
            })
            .collect(),
        false => format!("{space}\n"),
    })
    .await
}

/// `etracker consolidate --now`: the run's report, as the tracker sends it.
pub(crate) async fn consolidate(args: ConsolidateArgs) -> Result<(), BoxError> {
    if !args.now {
        return Err(
            "scheduled runs happen by themselves; pass --now to run one immediately".into(),
        );
    }
    let request = args.api.request(reqwest::Method::POST, "/consolidate");
    let (status, body) = args.api.send(request, IS_IT_RUNNING).await?;
    if !status.is_success() {
        return Err(format!("HTTP {status}: {body}").into());
    }
    print!("{body}");
    Ok(())
}

// The arguments of `etracker statement`.
#[derive(Args)]
pub(crate) struct StatementArgs {
    /// The UTC month, YYYY-MM.
    month: String,
    /// CSV (kind, party, space, bytes, usd), as the dashboard exports.
    #[arg(long)]
    csv: bool,
    #[command(flatten)]
    api: ApiArgs,
}

/// `etracker statement YYYY-MM [--csv]`: the month's statement, as JSON or CSV.
pub(crate) async fn statement(args: StatementArgs) -> Result<(), BoxError> {
    let month = args.month.trim();
    if etracker_server::admin::statements::month_days(month).is_none() {
        return Err(format!("{month:?} is not a month. Write it YYYY-MM, e.g. 2026-11.").into());
    }
    if !args.csv {
        let statement = args.api.get(&format!("statements/{month}"), &[]).await?;
        println!("{}", serde_json::to_string_pretty(&statement)?);
        return Ok(());
    }
    let path = format!("/admin/api/statements/{month}");
    let request = args
        .api
        .request(reqwest::Method::GET, &path)
        .query(&[("format", "csv")]);
    let (status, body) = args.api.send(request, IS_IT_RUNNING).await?;
    if !status.is_success() {
        return Err(format!("HTTP {status}: {body}").into());
    }
    print!("{body}");
    Ok(())
}
