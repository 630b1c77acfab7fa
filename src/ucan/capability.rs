//! One capability of a UCAN: `{can, with, nb?}`.

use crate::dag::{CodecError, Fields, Ipld, IpldMap};

/// One capability: an ability (`can`) on a resource (`with`) with caveats (`nb`).
#[derive(Clone, Debug, PartialEq)]
pub struct Capability {
    /// The ability, e.g. `space/egress/track`, `ns/*` or `*`.
    pub can: String,
    /// The resource URI, usually a DID.
    pub with: String,
    /// Caveats; `None` when absent.
    pub nb: Option<IpldMap>,
}

impl Capability {
    /// A capability without caveats.
    pub fn new(can: impl Into<String>, with: impl Into<String>) -> Self {
        Capability {
            can: can.into(),
            with: with.into(),
            nb: None,
        }
    }

    /// The same capability with caveats `nb`.
    pub fn with_nb(mut self, nb: IpldMap) -> Self {
        self.nb = Some(nb);
        self
    }

    /// The capability as an IPLD map.
    pub fn to_ipld(&self) -> Ipld {
        let mut map = IpldMap::new();
        map.insert("can".into(), Ipld::String(self.can.clone()));
        map.insert("with".into(), Ipld::String(self.with.clone()));
        if let Some(nb) = &self.nb {
            map.insert("nb".into(), Ipld::Map(nb.clone()));
        }
        Ipld::Map(map)
    }

    /// Whether `value` is what [`Capability::to_ipld`] makes.
    pub(super) fn is_written_as(&self, value: &Ipld) -> bool {
        let Ipld::Map(map) = value else {
            return false;
        };
        map.len() == 2 + usize::from(self.nb.is_some())
            && matches!(map.get("can"), Some(Ipld::String(s)) if *s == self.can)
            && matches!(map.get("with"), Some(Ipld::String(s)) if *s == self.with)
            && self
                .nb
                .as_ref()
                .is_none_or(|nb| matches!(map.get("nb"), Some(Ipld::Map(m)) if m == nb))
    }

    /// Reads a capability as [`Capability::from_ipld`] does, from canonical
    /// dag-cbor ([`UcanData::read_canonical`]); `None` for anything else.
    pub(super) fn read_canonical(r: &mut crate::dag::canonical::Reader<'_>) -> Option<Self> {
        let (mut can, mut with, mut nb) = (None, None, None);
        r.entries(|r, key| {
            match key {
                "can" => can = Some(r.string()?),
                "with" => with = Some(r.string()?),
                "nb" => match r.any()? {
                    Ipld::Map(map) => nb = Some(map),
                    _ => return None,
                },
                _ => return None,
            }
            Some(())
        })?;
        let can = can.filter(|can| *can == "*" || can.trim_matches('/').contains('/'))?;
        let with = with.filter(|with| with.contains(':'))?;
        Some(Capability {
            can: can.to_string(),
            with: with.to_string(),
            nb,
        })
    }

    /// Reads a capability from its IPLD map.
    pub fn from_ipld(value: &Ipld) -> Result<Self, CodecError> {
        let fields = Fields::of("capability", value)?.only(&["can", "with", "nb"])?;
        let can = fields.string("can")?;
        if can != "*" && !can.trim_matches('/').contains('/') {
            return Err(CodecError::schema(
                "capability.can",
                format!("{can:?} must have at least one path segment"),
            ));
        }
        let with = fields.string("with")?;
        if !with.contains(':') {
            return Err(CodecError::schema(
                "capability.with",
                format!("{with:?} is not a URI"),
            ));
        }
        let nb = match fields.get("nb") {
            None => None,
            Some(Ipld::Map(map)) => Some(map.clone()),
            Some(_) => return Err(CodecError::schema("capability.nb", "expected a map")),
        };
        Ok(Capability {
            can: can.to_string(),
            with: with.to_string(),
            nb,
        })
    }
}
