//! Typed reads of the fields of an IPLD map, failing with a [`FieldError`]
//! that names the field by its path (`receipt.ocm.out`, `nb.range[1]`, …).
//!
//! One reader serves every decoder: UCANs, receipts and agent messages here,
//! capability `nb`s and results in `etracker-capabilities`, store records in
//! the tracker. Each maps [`FieldError`] into its own error type.
//!
//! ```
//! use ucanto::dag::{Fields, FieldError, Ipld};
//! let value = Ipld::Map([("n".to_string(), Ipld::Integer(-1))].into());
//! let fields = Fields::of("ok", &value)?;
//! assert_eq!(fields.uint("n").unwrap_err().to_string(), "ok.n: -1 is negative");
//! assert_eq!(fields.only(&["m"]).unwrap_err().to_string(), "ok: unknown field \"n\"");
//! # Ok::<(), FieldError>(())
//! ```

use std::borrow::Cow;

use cid::Cid;

use super::{Ipld, IpldMap};

/// A value that does not have the expected shape. The message starts with
/// the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldError {
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
    /// A map has a field its schema does not allow.
    #[error("{map}: unknown field {name:?}")]
    Unknown {
        /// Path of the map.
        map: String,
        /// The field's name.
        name: String,
    },
}

impl FieldError {
    /// Path of the offending field (of the map, for [`FieldError::Unknown`]).
    pub fn field(&self) -> &str {
        match self {
            FieldError::Missing { field }
            | FieldError::WrongType { field, .. }
            | FieldError::Invalid { field, .. } => field,
            FieldError::Unknown { map, .. } => map,
        }
    }

    /// What is wrong, without the path.
    pub fn reason(&self) -> String {
        match self {
            FieldError::Missing { .. } => "missing".into(),
            FieldError::WrongType { expected, .. } => format!("expected {expected}"),
            FieldError::Invalid { reason, .. } => reason.clone(),
            FieldError::Unknown { name, .. } => format!("unknown field {name:?}"),
        }
    }

    /// The field at `field` has an unacceptable value.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The field at `field` is not `expected` (`a link`, `a string`…).
    pub fn wrong_type(field: impl Into<String>, expected: &'static str) -> Self {
        FieldError::WrongType {
            field: field.into(),
            expected,
        }
    }
}

/// Typed access to the fields of a map found at a path.
///
/// Unknown fields are ignored, as the JS (`Schema.struct`) and Go
/// (ipld-prime struct) readers ignore them, unless [`Fields::only`] says
/// which are allowed.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    path: Cow<'a, str>,
    map: &'a IpldMap,
}

impl<'a> Fields<'a> {
    /// Views `map`, found at `path`.
    pub fn new(path: impl Into<Cow<'a, str>>, map: &'a IpldMap) -> Self {
        Fields {
            path: path.into(),
            map,
        }
    }

    /// Views `value`, which must be a map, found at `path`.
    pub fn of(path: impl Into<Cow<'a, str>>, value: &'a Ipld) -> Result<Self, FieldError> {
        let path = path.into();
        match value {
            Ipld::Map(map) => Ok(Fields { path, map }),
            _ => Err(FieldError::wrong_type(path, "a map")),
        }
    }

    /// The same view, refusing any field not in `allowed`.
    pub fn only(self, allowed: &[&str]) -> Result<Self, FieldError> {
        match self.map.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(unknown) => Err(FieldError::Unknown {
                map: self.path.into_owned(),
                name: unknown.clone(),
            }),
            None => Ok(self),
        }
    }

    /// Path of `key` under this map.
    pub fn path(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    /// The map itself.
    pub fn map(&self) -> &'a IpldMap {
        self.map
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&'a Ipld> {
        self.map.get(key)
    }

    /// The value of `key`, which must be present.
    pub fn required(&self, key: &str) -> Result<&'a Ipld, FieldError> {
        self.get(key).ok_or_else(|| FieldError::Missing {
            field: self.path(key),
        })
    }

    /// A string.
    pub fn string(&self, key: &str) -> Result<&'a str, FieldError> {
        self.opt_string(key)?.ok_or_else(|| self.missing(key))
    }

    /// A string, if present.
    pub fn opt_string(&self, key: &str) -> Result<Option<&'a str>, FieldError> {
        self.opt(key, "a string", |v| match v {
            Ipld::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// Bytes.
    pub fn bytes(&self, key: &str) -> Result<&'a [u8], FieldError> {
        self.opt(key, "bytes", |v| match v {
            Ipld::Bytes(b) => Some(b.as_slice()),
            _ => None,
        })?
        .ok_or_else(|| self.missing(key))
    }

    /// A link.
    pub fn link(&self, key: &str) -> Result<Cid, FieldError> {
        self.opt_link(key)?.ok_or_else(|| self.missing(key))
    }

    /// A link, if present.
    pub fn opt_link(&self, key: &str) -> Result<Option<Cid>, FieldError> {
        self.opt(key, "a link", |v| match v {
            Ipld::Link(cid) => Some(*cid),
            _ => None,
        })
    }

    /// A list.
    pub fn list(&self, key: &str) -> Result<&'a [Ipld], FieldError> {
        self.opt(key, "a list", |v| match v {
            Ipld::List(items) => Some(items.as_slice()),
            _ => None,
        })?
        .ok_or_else(|| self.missing(key))
    }

    /// A list of links.
    pub fn links(&self, key: &str) -> Result<Vec<Cid>, FieldError> {
        self.list(key)?
            .iter()
            .map(|item| match item {
                Ipld::Link(cid) => Ok(*cid),
                _ => Err(FieldError::wrong_type(self.path(key), "a list of links")),
            })
            .collect()
    }

    /// A nested map, as a map.
    pub fn submap(&self, key: &str) -> Result<&'a IpldMap, FieldError> {
        Ok(self.fields(key)?.map)
    }

    /// A nested map, as fields.
    pub fn fields(&self, key: &str) -> Result<Fields<'a>, FieldError> {
        Fields::of(self.path(key), self.required(key)?)
    }

    /// An unsigned integer that fits in a `u64`.
    pub fn uint(&self, key: &str) -> Result<u64, FieldError> {
        self.uint_at(key, self.required(key)?)
    }

    /// `value`, the field `key`, as a u64: the path is written only for an
    /// error, as decoding reads integers from every block.
    fn uint_at(&self, key: &str, value: &Ipld) -> Result<u64, FieldError> {
        uint("", value).or_else(|_| uint(&self.path(key), value))
    }

    /// An unsigned integer, if present; `null` reads as absent when `nullable`.
    pub fn opt_uint(&self, key: &str, nullable: bool) -> Result<Option<u64>, FieldError> {
        match self.get(key) {
            None => Ok(None),
            Some(Ipld::Null) if nullable => Ok(None),
            Some(value) => self.uint_at(key, value).map(Some),
        }
    }

    fn missing(&self, key: &str) -> FieldError {
        FieldError::Missing {
            field: self.path(key),
        }
    }

    /// The value of `key` read by `read`, which says `None` when it is not
    /// `expected`.
    fn opt<T>(
        &self,
        key: &str,
        expected: &'static str,
        read: impl FnOnce(&'a Ipld) -> Option<T>,
    ) -> Result<Option<T>, FieldError> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => read(value)
                .map(Some)
                .ok_or_else(|| FieldError::wrong_type(self.path(key), expected)),
        }
    }
}

/// A non-negative integer that fits in a `u64`, found at `path`.
pub fn uint(path: &str, value: &Ipld) -> Result<u64, FieldError> {
    match value {
        Ipld::Integer(i) if *i < 0 => Err(FieldError::invalid(path, format!("{i} is negative"))),
        Ipld::Integer(i) => u64::try_from(*i)
            .map_err(|_| FieldError::invalid(path, format!("{i} does not fit in 64 bits"))),
        _ => Err(FieldError::wrong_type(path, "an integer")),
    }
}
