//! `space/egress/track`: a storage node asks the tracker to account for a
//! batch of retrieval receipts it serves at `endpoint`.
//!
//! # Format
//! ```text
//! invocation  iss: node, aud: tracker, exp: …, prf: [tracker → node delegation]
//! capability  { can: "space/egress/track", with: <tracker DID>,
//!               nb: { receipts: Link<batch, codec car 0x0202>,
//!                     endpoint: "https://node.example/receipts/{cid}" } }
//! ok          {}                                     (fx.fork = [consolidate invocation])
//! error       { name: "EgressTrackError", message: string }
//!           | { name: "TrackTooLarge", message: string }
//!           | { name: "TooManyPendingBatches", message: string }
//! ```
//! `TrackTooLarge`: the track invocation block is bigger than the tracker
//! keeps ([`MAX_TRACK_INVOCATION_BYTES`]); `TooManyPendingBatches`: the node
//! has as many batches waiting for consolidation as the tracker allows. In
//! both cases nothing is stored, and the node may track again later (the
//! second once some of its batches are concluded).
//! `endpoint` must be an absolute `http`/`https` URL with a placeholder for
//! the batch CID: `{cid}`, its URL-escaped form `%7Bcid%7D` (what Go's
//! `url.URL` writes; hex digits in either case) or `:cid`. This is stricter
//! than the JS `Schema.string()`, as strict as go-libstoracha's `URL` plus the
//! placeholder a tracker needs, and at most [`MAX_ENDPOINT_BYTES`] long. Derivation is the default rule: a delegation
//! that pins `receipts` or `endpoint` only covers invocations with the same
//! value (compared by value; note JS @ucanto's default rule compares links by
//! object identity, so there a pinned link never matches).

use cid::Cid;
use ucanto::dag::{Ipld, IpldMap};

use crate::schema::{nb_or_empty, Fields};
use crate::{named_failure, Ability, Empty, SchemaError};

/// The `space/egress/track` capability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Track;

/// Caveats of `space/egress/track`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackNb {
    /// The batch: CIDv1 (codec car) of the batch file.
    pub receipts: Cid,
    /// Where the tracker fetches the batch, with a CID placeholder.
    pub endpoint: String,
}

impl TrackNb {
    /// Caveats for `receipts` served at `endpoint`, checked like [`Track::parse_nb`].
    pub fn new(receipts: Cid, endpoint: impl Into<String>) -> Result<Self, SchemaError> {
        let endpoint = endpoint.into();
        check_endpoint(&endpoint)?;
        Ok(TrackNb { receipts, endpoint })
    }

    /// The URL to fetch this batch from.
    pub fn url(&self) -> String {
        endpoint_url(&self.endpoint, &self.receipts)
    }
}

impl Ability for Track {
    const CAN: &'static str = "space/egress/track";
    type Nb = TrackNb;

    fn parse_nb(nb: Option<&IpldMap>) -> Result<TrackNb, SchemaError> {
        let fields = Fields::new("nb", nb_or_empty(nb));
        let receipts = fields.link("receipts")?;
        let endpoint = fields.string("endpoint")?;
        check_endpoint(endpoint)?;
        Ok(TrackNb {
            receipts,
            endpoint: endpoint.to_string(),
        })
    }

    fn to_nb(nb: &TrackNb) -> IpldMap {
        IpldMap::from([
            ("receipts".to_string(), Ipld::Link(nb.receipts)),
            ("endpoint".to_string(), Ipld::String(nb.endpoint.clone())),
        ])
    }
}

/// Success of `space/egress/track`: `{}`.
pub type TrackOk = Empty;

named_failure! {
    /// Failure of `space/egress/track`: `{name: "EgressTrackError", message}`.
    TrackError = "EgressTrackError"
}

named_failure! {
    /// Failure of `space/egress/track` whose invocation block is larger
    /// than [`MAX_TRACK_INVOCATION_BYTES`]: `{name: "TrackTooLarge", message}`.
    TrackTooLarge = "TrackTooLarge"
}

named_failure! {
    /// Failure of `space/egress/track` from a node that already has as many
    /// batches pending as the tracker allows:
    /// `{name: "TooManyPendingBatches", message}`.
    TooManyPendingBatches = "TooManyPendingBatches"
}

/// Longest endpoint (bytes). A URL of a host and a path with a CID
/// placeholder fits in a few hundred; 2 KiB is what browsers and proxies
/// have long accepted.
pub const MAX_ENDPOINT_BYTES: usize = 2048;

/// Largest track invocation block a tracker keeps (bytes). A track carries
/// one capability (the batch link and an endpoint of at most
/// [`MAX_ENDPOINT_BYTES`]), a signature, two DIDs and links to its proofs
/// (~40 bytes each): under 1 KiB with one proof, a 2 KiB endpoint and
/// dozens of proof links included. Proof blocks travel beside it and are not
/// kept: the tracker checks them when the invocation arrives.
pub const MAX_TRACK_INVOCATION_BYTES: usize = 8 * 1024;

/// Length of the CID placeholder at the start of `rest`, if there is one.
fn placeholder_len(rest: &[u8]) -> Option<usize> {
    if rest.starts_with(b"{cid}") {
        return Some(5);
    }
    if let [b'%', b'7', b, b'c', b'i', b'd', b'%', b'7', d, ..] = rest {
        if b.eq_ignore_ascii_case(&b'b') && d.eq_ignore_ascii_case(&b'd') {
            return Some(9);
        }
    }
    // `:cid` as a whole parameter name (not `:cids`, `:cid_2`).
    if rest.starts_with(b":cid")
        && !rest
            .get(4)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
    {
        return Some(4);
    }
    None
}

/// `endpoint` with every CID placeholder (`{cid}`, `%7Bcid%7D`, `:cid`)
/// replaced by `batch` (base32 CID string).
pub fn endpoint_url(endpoint: &str, batch: &Cid) -> String {
    let cid = batch.to_string();
    let bytes = endpoint.as_bytes();
    let mut out = String::with_capacity(endpoint.len() + cid.len());
    let (mut i, mut copied) = (0, 0);
    while i < bytes.len() {
        match placeholder_len(&bytes[i..]) {
            Some(len) => {
                // Placeholders are ASCII, so i and i + len are char boundaries.
                out.push_str(&endpoint[copied..i]);
                out.push_str(&cid);
                i += len;
                copied = i;
            }
            None => i += 1,
        }
    }
    out.push_str(&endpoint[copied..]);
    out
}

/// Checks an endpoint: absolute http(s) URL with a CID placeholder, still a
/// valid URL once a CID is put in it.
pub fn check_endpoint(endpoint: &str) -> Result<(), SchemaError> {
    let bad = |reason: String| SchemaError::invalid("nb.endpoint", reason);
    if endpoint.len() > MAX_ENDPOINT_BYTES {
        return Err(bad(format!(
            "{} bytes, more than the {MAX_ENDPOINT_BYTES} allowed",
            endpoint.len()
        )));
    }
    let bytes = endpoint.as_bytes();
    if !(0..bytes.len()).any(|i| placeholder_len(&bytes[i..]).is_some()) {
        return Err(bad(format!(
            "{endpoint:?} has no {{cid}} placeholder ({{cid}}, %7Bcid%7D or :cid)"
        )));
    }
    let lower = endpoint.get(..8).unwrap_or(endpoint).to_ascii_lowercase();
    let authority = ["http://", "https://"]
        .iter()
        .find(|scheme| lower.starts_with(*scheme))
        .map(|scheme| &endpoint[scheme.len()..]);
    // `https:///x` would parse with host `x`: require the host right after `//`.
    if authority.is_none_or(|rest| rest.is_empty() || rest.starts_with(['/', '\\'])) {
        return Err(bad(format!(
            "{endpoint:?} is not an absolute http or https URL"
        )));
    }
    // Any CID will do to check the URL that will actually be fetched.
    let sample = ucanto::dag::cid_of(ucanto::dag::CAR, &[]);
    let url = url::Url::parse(&endpoint_url(endpoint, &sample))
        .map_err(|e| bad(format!("{endpoint:?} is not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(bad(format!(
            "{endpoint:?} is not an absolute http or https URL"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outcome;

    fn batch() -> Cid {
        "bagbaiera42benrzjlyi254badv3tqj4f3uidekih7dcqjfovcfi5vccqq3uq"
            .parse()
            .unwrap()
    }

    #[test]
    fn placeholders_are_substituted() {
        let b = batch();
        for endpoint in [
            "https://node.example/receipts/{cid}",
            "https://node.example/receipts/%7Bcid%7D",
            "https://node.example/receipts/%7bcid%7d",
            "https://node.example/receipts/:cid",
        ] {
            assert!(check_endpoint(endpoint).is_ok(), "{endpoint}");
            assert_eq!(
                endpoint_url(endpoint, &b),
                format!("https://node.example/receipts/{b}"),
                "{endpoint}"
            );
        }
        assert_eq!(
            endpoint_url("http://n.example/{cid}?again={cid}", &b),
            format!("http://n.example/{b}?again={b}")
        );
        assert_eq!(
            endpoint_url("http://n.example/:cids/x", &b),
            "http://n.example/:cids/x"
        );
        assert_eq!(
            endpoint_url("http://n.example/é/:cid", &b),
            format!("http://n.example/é/{b}")
        );
    }

    #[test]
    fn bad_endpoints_name_the_field() {
        for endpoint in [
            "https://node.example/receipts/",
            "https://node.example/receipts/{CID}",
            "https://node.example/receipts/:cids",
            "ftp://node.example/{cid}",
            "node.example/{cid}",
            "/receipts/{cid}",
            "http:node.example/{cid}",
            "https:///{cid}",
            "https://node.example:port/{cid}",
            "",
            &format!(
                "https://node.example/{}/{{cid}}",
                "a".repeat(MAX_ENDPOINT_BYTES)
            ),
        ] {
            let err = check_endpoint(endpoint).unwrap_err();
            assert_eq!(err.field(), "nb.endpoint", "{endpoint}");
            assert!(err.to_string().starts_with("nb.endpoint: "), "{err}");
        }
    }

    #[test]
    fn malformed_nb_names_the_field() {
        let good = Track::to_nb(&TrackNb::new(batch(), "https://n.example/{cid}").unwrap());
        type Edit = fn(&mut IpldMap);
        let cases: [(&str, Edit, &str); 5] = [
            (
                "nb.receipts",
                |nb| drop(nb.remove("receipts")),
                "nb.receipts: missing",
            ),
            (
                "nb.receipts",
                |nb| drop(nb.insert("receipts".into(), Ipld::String("bafy".into()))),
                "expected a link",
            ),
            (
                "nb.endpoint",
                |nb| drop(nb.remove("endpoint")),
                "nb.endpoint: missing",
            ),
            (
                "nb.endpoint",
                |nb| drop(nb.insert("endpoint".into(), Ipld::Integer(1))),
                "expected a string",
            ),
            (
                "nb.endpoint",
                |nb| drop(nb.insert("endpoint".into(), Ipld::String("https://n.example/".into()))),
                "placeholder",
            ),
        ];
        for (field, edit, text) in cases {
            let mut nb = good.clone();
            edit(&mut nb);
            let err = Track::parse_nb(Some(&nb)).unwrap_err();
            assert_eq!(err.field(), field);
            assert!(err.to_string().contains(text), "{err}");
        }
        assert_eq!(
            Track::parse_nb(None).unwrap_err().to_string(),
            "nb.receipts: missing"
        );
    }

    #[test]
    fn error_value_round_trips() {
        let err = TrackError::new("could not track batch");
        let value = err.to_ipld();
        assert_eq!(TrackError::from_ipld(&value).unwrap(), err);
        let other = crate::schema::failure("Unauthorized", "no");
        assert_eq!(
            TrackError::from_ipld(&other).unwrap_err().field(),
            "error.name"
        );
        let too_large = TrackTooLarge::new("9000 bytes").to_ipld();
        assert_eq!(
            TrackTooLarge::from_ipld(&too_large).unwrap().message,
            "9000 bytes"
        );
        assert!(TrackError::from_ipld(&too_large).is_err());
        let pending = TooManyPendingBatches::new("64 pending").to_ipld();
        assert_eq!(
            TooManyPendingBatches::from_ipld(&pending).unwrap().message,
            "64 pending"
        );
    }

    #[test]
    fn the_longest_endpoint_is_accepted() {
        let base = "https://node.example/{cid}/";
        let longest = format!("{base}{}", "a".repeat(MAX_ENDPOINT_BYTES - base.len()));
        assert!(check_endpoint(&longest).is_ok());
        let err = check_endpoint(&format!("{longest}a")).unwrap_err();
        assert!(err.to_string().contains("2049 bytes"), "{err}");
    }
}
