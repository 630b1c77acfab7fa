//! How the `etracker-node` command line names the tracker it talks to
//! (errors are worded as everywhere, by `ucanto::cli`).

use std::sync::Arc;

use ucanto::principal::Verifier;

pub use ucanto::cli::{explain, sentence, BoxError};

/// The tracker a command talks to.
#[derive(clap::Args, Clone, Debug)]
pub struct TrackerArgs {
    /// The tracker's URL.
    #[arg(long, env = "ETRACKER_TRACKER_URL")]
    pub tracker_url: String,
    /// The tracker's DID.
    #[arg(long, env = "ETRACKER_TRACKER_DID")]
    pub tracker_did: String,
    /// The tracker's did:key, when its DID is a did:web.
    #[arg(long, env = "ETRACKER_TRACKER_KEY")]
    pub tracker_key: Option<String>,
}

impl TrackerArgs {
    /// The tracker's principal, which verifies its receipts.
    pub fn verifier(&self) -> Result<Arc<dyn Verifier>, BoxError> {
        crate::verifier(&self.tracker_did, self.tracker_key.as_deref()).map_err(explain(
            format!("the tracker DID {:?} cannot be used", self.tracker_did),
            "Pass the DID `etracker start` printed (--tracker-did), and for a did:web its did:key (--tracker-key).",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_tracker_did_reads_as_one_sentence() {
        let bad = TrackerArgs {
            tracker_url: "http://127.0.0.1:1".into(),
            tracker_did: "did:key:bogus".into(),
            tracker_key: None,
        };
        let text = bad.verifier().err().unwrap().to_string();
        assert!(
            text.starts_with("the tracker DID \"did:key:bogus\" cannot be used: "),
            "{text}"
        );
        assert!(!text.contains("InvalidDid("), "{text}");
    }
}
