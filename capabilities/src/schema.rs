//! Readers over IPLD values that fail with a [`SchemaError`] naming the field.

pub(crate) use ucanto::dag::{uint, Fields};
use ucanto::dag::{FieldError, Ipld, IpldMap};
use ucanto::principal::Did;

/// A capability (`can`, `with`, `nb`) or a result value that does not have the
/// expected shape. The message always starts with the path of the offending
/// field, e.g. `nb.endpoint: …`, `nb.range[1]: …`, `with: …`, `ok.totalEgress: …`.
pub type SchemaError = FieldError;

/// The map an absent `nb` stands for (JS reads `capability.nb || {}`).
pub(crate) fn nb_or_empty(nb: Option<&IpldMap>) -> &IpldMap {
    static EMPTY: IpldMap = IpldMap::new();
    nb.unwrap_or(&EMPTY)
}

/// A DID, optionally restricted to one method (`key`, `mailto`, …).
pub(crate) fn did(path: &str, value: &str, method: Option<&str>) -> Result<Did, SchemaError> {
    let did = Did::parse(value).map_err(|e| SchemaError::invalid(path, e.to_string()))?;
    if let Some(method) = method {
        let of_method = value
            .strip_prefix("did:")
            .and_then(|rest| rest.strip_prefix(method))
            .is_some_and(|rest| rest.starts_with(':'));
        if !of_method {
            return Err(SchemaError::invalid(
                path,
                format!("expected a did:{method}: DID, got {value:?}"),
            ));
        }
    }
    Ok(did)
}

/// `{name, message}`: a domain error as go-libstoracha's schemas define it
/// (no `stack`: Go's struct readers refuse unknown fields).
pub(crate) fn failure(name: &str, message: &str) -> Ipld {
    Ipld::Map(IpldMap::from([
        ("name".to_string(), Ipld::String(name.to_string())),
        ("message".to_string(), Ipld::String(message.to_string())),
    ]))
}

/// Reads the `message` of an `out.error` value whose `name` must be one of `names`;
/// returns the name found and the message.
pub(crate) fn read_failure(
    value: &Ipld,
    names: &[&'static str],
) -> Result<(&'static str, String), SchemaError> {
    let fields = Fields::of("error", value)?;
    let name = fields.string("name")?;
    let Some(known) = names.iter().find(|n| **n == name) else {
        return Err(SchemaError::invalid(
            "error.name",
            format!("expected one of {names:?}, got {name:?}"),
        ));
    };
    Ok((known, fields.string("message")?.to_string()))
}
