//! What the `etracker-node` and `etracker` command lines share: how they name
//! the tracker, and how they word an error for a person.

use std::sync::Arc;

use ucanto::principal::Verifier;

/// Any error a command may end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

/// Turns an error into "`what`: cause. `hint`", a sentence a person can act on.
pub fn explain<E: Into<BoxError>>(
    what: impl std::fmt::Display,
    hint: &str,
) -> impl FnOnce(E) -> BoxError + '_ {
    let what = what.to_string();
    move |error| {
        let error: BoxError = error.into();
        format!("{what}: {}. {hint}", sentence(error.as_ref())).into()
    }
}

/// An error and its causes, as one line: each cause once, no Debug dump.
pub fn sentence(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_one_sentence_with_their_causes_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let failure = explain("cannot reach the tracker", "Is it running?")(io);
        assert_eq!(
            failure.to_string(),
            "cannot reach the tracker: connection refused. Is it running?"
        );
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
