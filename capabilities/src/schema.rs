//! Readers over IPLD values that fail with a [`SchemaError`] naming the field.

use cid::Cid;
use ucanto::dag::{Ipld, IpldMap};
use ucanto::principal::Did;

/// A capability (`can`, `with`, `nb`) or a result value that does not have the
/// expected shape. The message always starts with the path of the offending
/// field, e.g. `nb.endpoint: …`, `nb.range[1]: …`, `with: …`, `ok.totalEgress: …`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// A required field is absent.
    #[error("{field}: missing")]
    Missing {
        /// Path of the field, e.g. `nb.receipts`.
        field: String,
    },
    /// A field has the wrong IPLD kind.
    #[error("{field}: expected {expected}")]
    WrongType {
        /// Path of the field.
        field: String,
        /// What was expected, e.g. `a link`.
        expected: &'static str,
    },
    /// A field has the right kind but an unacceptable value.
    #[error("{field}: {reason}")]
    Invalid {
        /// Path of the field.
        field: String,
        /// Why the value is refused.
        reason: String,
    },
}

impl SchemaError {
    /// Path of the offending field, e.g. `nb.endpoint`.
    pub fn field(&self) -> &str {
        match self {
            SchemaError::Missing { field }
            | SchemaError::WrongType { field, .. }
            | SchemaError::Invalid { field, .. } => field,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        SchemaError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn wrong_type(field: impl Into<String>, expected: &'static str) -> Self {
        SchemaError::WrongType {
            field: field.into(),
            expected,
        }
    }
}

/// The map an absent `nb` stands for (JS reads `capability.nb || {}`).
pub(crate) fn nb_or_empty(nb: Option<&IpldMap>) -> &IpldMap {
    static EMPTY: IpldMap = IpldMap::new();
    nb.unwrap_or(&EMPTY)
}

/// Typed access to the fields of a map found at `path`.
///
/// Unknown fields are ignored, as the JS (`Schema.struct`) and Go (ipld-prime
/// struct) readers ignore them.
pub(crate) struct Fields<'a> {
    path: String,
    map: &'a IpldMap,
}

impl<'a> Fields<'a> {
    /// Views `map`, found at `path`.
    pub(crate) fn new(path: impl Into<String>, map: &'a IpldMap) -> Self {
        Fields {
            path: path.into(),
            map,
        }
    }

    /// Views `value`, which must be a map, found at `path`.
    pub(crate) fn of(path: impl Into<String>, value: &'a Ipld) -> Result<Self, SchemaError> {
        let path = path.into();
        match value {
            Ipld::Map(map) => Ok(Fields { path, map }),
            _ => Err(SchemaError::wrong_type(path, "a map")),
        }
    }

    /// Path of `key` under this map.
    pub(crate) fn path(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'a Ipld> {
        self.map.get(key)
    }

    pub(crate) fn required(&self, key: &str) -> Result<&'a Ipld, SchemaError> {
        self.get(key).ok_or_else(|| SchemaError::Missing {
            field: self.path(key),
        })
    }

    pub(crate) fn string(&self, key: &str) -> Result<&'a str, SchemaError> {
        match self.required(key)? {
            Ipld::String(s) => Ok(s),
            _ => Err(SchemaError::wrong_type(self.path(key), "a string")),
        }
    }

    pub(crate) fn link(&self, key: &str) -> Result<Cid, SchemaError> {
        match self.required(key)? {
            Ipld::Link(cid) => Ok(*cid),
            _ => Err(SchemaError::wrong_type(self.path(key), "a link")),
        }
    }

    pub(crate) fn bytes(&self, key: &str) -> Result<&'a [u8], SchemaError> {
        match self.required(key)? {
            Ipld::Bytes(b) => Ok(b),
            _ => Err(SchemaError::wrong_type(self.path(key), "bytes")),
        }
    }

    pub(crate) fn uint(&self, key: &str) -> Result<u64, SchemaError> {
        uint(&self.path(key), self.required(key)?)
    }

    pub(crate) fn list(&self, key: &str) -> Result<&'a [Ipld], SchemaError> {
        match self.required(key)? {
            Ipld::List(items) => Ok(items),
            _ => Err(SchemaError::wrong_type(self.path(key), "a list")),
        }
    }

    pub(crate) fn fields(&self, key: &str) -> Result<Fields<'a>, SchemaError> {
        Fields::of(self.path(key), self.required(key)?)
    }
}

/// A non-negative integer that fits in a `u64`.
pub(crate) fn uint(path: &str, value: &Ipld) -> Result<u64, SchemaError> {
    match value {
        Ipld::Integer(i) if *i < 0 => Err(SchemaError::invalid(path, format!("{i} is negative"))),
        Ipld::Integer(i) => u64::try_from(*i)
            .map_err(|_| SchemaError::invalid(path, format!("{i} does not fit in 64 bits"))),
        _ => Err(SchemaError::wrong_type(path, "an integer")),
    }
}

/// A DID, optionally restricted to one method (`key`, `mailto`, …).
pub(crate) fn did(path: &str, value: &str, method: Option<&str>) -> Result<Did, SchemaError> {
    let did = Did::parse(value).map_err(|e| SchemaError::invalid(path, e.to_string()))?;
    if let Some(method) = method {
        let prefix = format!("did:{method}:");
        if !value.starts_with(&prefix) {
            return Err(SchemaError::invalid(
                path,
                format!("expected a {prefix} DID, got {value:?}"),
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
