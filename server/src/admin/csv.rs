//! The dashboard's CSV exports, one format for the pages' downloads and for
//! `etracker nodes --csv` / `etracker usage --csv`: every table of the
//! dashboard has one (times as unix seconds, money to the cent).

/// The header of the nodes export.
pub const NODES_HEADER: &str = "node,total_bytes,payout_usd\n";
/// The header of the spaces export: one row per space and day.
pub const SPACES_HEADER: &str = "space,customer,day,bytes,cost_usd\n";

/// The header of a node's batches export.
pub const BATCHES_HEADER: &str =
    "batch,received_at,state,total_bytes,counted_receipts,last_error,receipt\n";
/// The header of the overview's pending batches export.
pub const PENDING_HEADER: &str =
    "batch,node,received_at,state,attempts,last_error,next_attempt_at\n";
/// The header of the overview's receipts not counted, by error.
pub const REJECTED_HEADER: &str = "error,receipts\n";
/// The header of egress per day.
pub const DAYS_HEADER: &str = "day,bytes\n";

/// A row of `fields`, each made [`field`]-safe.
pub fn row<S: AsRef<str>>(fields: &[S]) -> String {
    let mut line = fields
        .iter()
        .map(|f| field(f.as_ref()))
        .collect::<Vec<_>>()
        .join(",");
    line.push('\n');
    line
}

/// A row of the nodes export.
pub fn node_row(node: &str, total_bytes: u64, payout_usd: Option<f64>) -> String {
    row(&[node, &total_bytes.to_string(), &cents(payout_usd)])
}

/// A row of the spaces export.
pub fn space_row(
    space: &str,
    customer: Option<&str>,
    day: &str,
    bytes: u64,
    cost_usd: Option<f64>,
) -> String {
    row(&[
        space,
        customer.unwrap_or_default(),
        day,
        &bytes.to_string(),
        &cents(cost_usd),
    ])
}

/// Dollars to the cent; empty without a price.
fn cents(usd: Option<f64>) -> String {
    usd.map(|v| format!("{v:.2}")).unwrap_or_default()
}

/// A CSV field: quoted when it holds a quote, comma or line break; a
/// leading `=`, `+`, `-` or `@` is prefixed with `'` so that a spreadsheet
/// does not run it as a formula.
pub fn field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if text.contains(['"', ',', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_stay_data() {
        assert_eq!(field("did:key:z6Mk"), "did:key:z6Mk");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(field("-1"), "'-1");
    }

    #[test]
    fn rows_match_their_headers() {
        assert_eq!(node_row("did:key:a", 7, Some(1.25)), "did:key:a,7,1.25\n");
        assert_eq!(node_row("did:key:a", 7, None), "did:key:a,7,\n");
        assert_eq!(
            space_row(
                "did:key:s",
                Some("did:mailto:x"),
                "2026-01-02",
                9,
                Some(0.5)
            ),
            "did:key:s,did:mailto:x,2026-01-02,9,0.50\n"
        );
        for (header, line) in [
            (NODES_HEADER, node_row("n", 1, None)),
            (SPACES_HEADER, space_row("s", None, "d", 1, None)),
            (REJECTED_HEADER, row(&["e", "1"])),
        ] {
            assert_eq!(header.split(',').count(), line.split(',').count());
        }
        assert_eq!(row(&["a,b", "=1"]), "\"a,b\",'=1\n");
    }
}
