//! Building blocks for [`CapabilityParser`](super::CapabilityParser)s whose
//! error texts match @ucanto/core's `Schema` readers, so a parse failure reads
//! the same in our receipts as in a JS service's.
//!
//! ```
//! use ucanto::validator::schema;
//! # use ucanto::dag::{Ipld, IpldMap};
//! let nb = IpldMap::from([("text".to_string(), Ipld::Integer(5))]);
//! assert_eq!(
//!     schema::string_field(Some(&nb), "text").unwrap_err(),
//!     "Object contains invalid field \"text\":\n  - Expected value of type string instead got 5"
//! );
//! ```

use cid::Cid;

use crate::dag::{Ipld, IpldMap};

use super::{js, Violation};

/// `li` of @ucanto: `"  - "` before the first line, two more spaces before the others.
pub fn li(message: &str) -> String {
    js::li(message)
}

/// How `Schema` prints an unexpected value (`5`, `"text"`, `undefined`, `array`, `CID`…).
pub fn describe(value: Option<&Ipld>) -> String {
    js::schema_string(value)
}

/// `Schema.typeError`: `Expected value of type {expect} instead got {actual}`.
pub fn type_error(expect: &str, actual: Option<&Ipld>) -> String {
    format!(
        "Expected value of type {expect} instead got {}",
        describe(actual)
    )
}

/// `Schema.literal` failure: `Expected literal "a" instead got "b"`.
pub fn literal_error(expect: &str, actual: Option<&Ipld>) -> String {
    format!(
        "Expected literal {} instead got {}",
        js::json_string(expect),
        describe(actual)
    )
}

/// A struct field failed: `Object contains invalid field "{at}":` and the cause as a bullet.
pub fn field_error(at: &str, cause: &str) -> String {
    format!("Object contains invalid field \"{at}\":\n{}", li(cause))
}

/// No variant of a union matched: every variant's error as a bullet.
pub fn union_error(causes: &[String]) -> String {
    let mut lines = vec!["Value does not match any type of the union:".to_string()];
    lines.extend(causes.iter().map(|c| li(c)));
    lines.join("\n")
}

/// `Schema.did()` on a resource: it must start with `did:`.
pub fn did(with: &str) -> Result<(), Violation> {
    did_method(with, None)
}

/// `Schema.did({ method })`: it must start with `did:{method}:` (or `did:` without a method).
pub fn did_method(with: &str, method: Option<&str>) -> Result<(), Violation> {
    let prefix = method.map_or_else(|| "did:".to_string(), |m| format!("did:{m}:"));
    if with.starts_with(&prefix) {
        Ok(())
    } else {
        // JS interpolates the raw text between quotes, without escaping.
        Err(Violation::new(format!(
            "Expected a {prefix} but got \"{with}\" instead"
        )))
    }
}

/// `Schema.string()` field of a struct (`nb`): the string, or the field error.
pub fn string_field(nb: Option<&IpldMap>, at: &str) -> Result<String, Violation> {
    match nb.and_then(|nb| nb.get(at)) {
        Some(Ipld::String(s)) => Ok(s.clone()),
        other => Err(Violation::new(field_error(
            at,
            &type_error("string", other),
        ))),
    }
}

/// `Schema.link(expected)`: a link with the expected CID's codec, hash, version and digest.
pub fn link_to(value: Option<&Ipld>, expected: &Cid) -> Result<Cid, Violation> {
    let cid = match value {
        None => return Err("Expected link but got undefined instead".into()),
        Some(Ipld::Null) => return Err("Expected link but got null instead".into()),
        Some(Ipld::Link(cid)) => *cid,
        Some(other) => {
            return Err(format!(
                "Expected link to be a CID instead of {}",
                js::string(Some(other))
            )
            .into())
        }
    };
    if cid.codec() != expected.codec() {
        return Err(format!(
            "Expected link to be CID with 0x{:x} codec",
            expected.codec()
        )
        .into());
    }
    if cid.hash().code() != expected.hash().code() {
        return Err(format!(
            "Expected link to be CID with 0x{:x} hashing algorithm",
            expected.hash().code()
        )
        .into());
    }
    let version = |c: &Cid| c.version() as u64;
    if version(&cid) != version(expected) {
        return Err(format!(
            "Expected link to be CID version {} instead of {}",
            version(expected),
            version(&cid)
        )
        .into());
    }
    if cid.hash().digest() != expected.hash().digest() {
        let b32 = |d: &[u8]| multibase::encode(multibase::Base::Base32Lower, d)[1..].to_string();
        return Err(format!(
            "Expected link with \"{}\" hash digest instead of \"{}\"",
            b32(expected.hash().digest()),
            b32(cid.hash().digest())
        )
        .into());
    }
    Ok(cid)
}
