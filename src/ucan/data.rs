//! The decoded fields of a UCAN, their canonical form and the bytes its
//! issuer signs.

use std::collections::BTreeSet;

use base64::Engine;
use cid::Cid;

use crate::dag::{CodecError, Fields, Ipld, IpldMap};
use crate::principal::{Did, Signature};

use super::Capability;

/// The decoded fields of a UCAN.
#[derive(Clone, Debug, PartialEq)]
pub struct UcanData {
    /// Version string, `0.9.1`.
    pub version: String,
    /// Who signed it.
    pub issuer: Did,
    /// Who it is for.
    pub audience: Did,
    /// What it grants or invokes.
    pub capabilities: Vec<Capability>,
    /// Expiry in Unix seconds; `None` never expires.
    pub expiration: Option<u64>,
    /// Not valid before, Unix seconds.
    pub not_before: Option<u64>,
    /// Nonce.
    pub nonce: Option<String>,
    /// Facts.
    pub facts: Vec<IpldMap>,
    /// Links to proofs (delegations).
    pub proofs: Vec<Cid>,
    /// The issuer's signature.
    pub signature: Signature,
}

impl UcanData {
    /// The exact bytes the issuer signs.
    pub fn signing_payload(&self) -> Result<Vec<u8>, CodecError> {
        signing_payload(
            &self.version,
            self.signature.code,
            &self.issuer,
            &self.audience,
            &self.capabilities,
            self.expiration,
            self.not_before,
            self.nonce.as_deref(),
            &self.facts,
            &self.proofs,
        )
    }

    /// The block JS @ucanto writes for these fields.
    pub(super) fn to_ipld(&self) -> Ipld {
        let mut map = IpldMap::new();
        map.insert("v".into(), Ipld::String(self.version.clone()));
        map.insert("iss".into(), Ipld::Bytes(self.issuer.to_ucan_bytes()));
        map.insert("aud".into(), Ipld::Bytes(self.audience.to_ucan_bytes()));
        map.insert(
            "att".into(),
            Ipld::List(self.capabilities.iter().map(Capability::to_ipld).collect()),
        );
        map.insert(
            "exp".into(),
            self.expiration
                .map_or(Ipld::Null, |e| Ipld::Integer(e.into())),
        );
        map.insert(
            "prf".into(),
            Ipld::List(self.proofs.iter().map(|c| Ipld::Link(*c)).collect()),
        );
        // Optional fields follow dag-ucan: nbf only when non-zero, nnc whenever
        // set (even empty), fct only when non-empty.
        if let Some(nbf) = self.not_before.filter(|n| *n != 0) {
            map.insert("nbf".into(), Ipld::Integer(nbf.into()));
        }
        if let Some(nnc) = &self.nonce {
            map.insert("nnc".into(), Ipld::String(nnc.clone()));
        }
        if !self.facts.is_empty() {
            map.insert(
                "fct".into(),
                Ipld::List(self.facts.iter().cloned().map(Ipld::Map).collect()),
            );
        }
        map.insert("s".into(), Ipld::Bytes(self.signature.encode()));
        Ipld::Map(map)
    }

    /// Whether `value`, a decoded block, is what JS @ucanto or go-ucanto
    /// writes for these fields ([`UcanData::to_ipld`], `to_go_ipld`).
    /// Compared in place: the block's bytes were checked to be the one
    /// dag-cbor encoding of `value`, so equal values mean equal blocks.
    pub(super) fn is_written_as(&self, value: &Ipld) -> bool {
        self.written_as(value, false) || self.written_as(value, true)
    }

    pub(super) fn written_as(&self, value: &Ipld, go: bool) -> bool {
        let Ipld::Map(map) = value else {
            return false;
        };
        let nbf = self.not_before.filter(|n| *n != 0);
        let with_prf = !(go && self.proofs.is_empty());
        let nnc = self.nonce.as_deref().filter(|n| !(go && n.is_empty()));
        let fields = 6
            + usize::from(with_prf)
            + usize::from(nbf.is_some())
            + usize::from(nnc.is_some())
            + usize::from(!self.facts.is_empty());
        let is = |key: &str, expected: &dyn Fn(&Ipld) -> bool| map.get(key).is_some_and(expected);
        let bytes =
            |expected: Vec<u8>| move |v: &Ipld| matches!(v, Ipld::Bytes(b) if *b == expected);
        map.len() == fields
            && is("v", &|v| matches!(v, Ipld::String(s) if *s == self.version))
            && is("iss", &bytes(self.issuer.to_ucan_bytes()))
            && is("aud", &bytes(self.audience.to_ucan_bytes()))
            && is("att", &|v| {
                matches!(v, Ipld::List(list) if list.len() == self.capabilities.len()
                    && list.iter().zip(&self.capabilities).all(|(v, c)| c.is_written_as(v)))
            })
            && is("exp", &|v| match (v, self.expiration) {
                (Ipld::Null, None) => true,
                (Ipld::Integer(i), Some(e)) => *i == i128::from(e),
                _ => false,
            })
            && (!with_prf || is("prf", &|v| links_are(v, &self.proofs)))
            && nbf.is_none_or(|n| is("nbf", &|v| *v == Ipld::Integer(n.into())))
            && nnc.is_none_or(|n| is("nnc", &|v| matches!(v, Ipld::String(s) if s == n)))
            && (self.facts.is_empty()
                || is("fct", &|v| {
                    matches!(v, Ipld::List(list) if list.len() == self.facts.len()
                        && list.iter().zip(&self.facts).all(|(v, f)| matches!(v, Ipld::Map(m) if m == f)))
                }))
            && is("s", &bytes(self.signature.encode()))
    }

    /// The block go-ucanto writes for these fields: as JS, but an empty `prf`
    /// and an empty `nnc` are left out. (What [`UcanData::is_written_as`]
    /// is tested against.)
    #[cfg(test)]
    pub(super) fn to_go_ipld(&self) -> Ipld {
        let Ipld::Map(mut map) = self.to_ipld() else {
            unreachable!("a UCAN is a map")
        };
        if self.proofs.is_empty() {
            map.remove("prf");
        }
        if self.nonce.as_deref() == Some("") {
            map.remove("nnc");
        }
        Ipld::Map(map)
    }

    pub(super) fn from_ipld(value: &Ipld) -> Result<Self, CodecError> {
        let f = Fields::of("ucan", value)?.only(&[
            "v", "iss", "aud", "att", "exp", "nbf", "nnc", "fct", "prf", "s",
        ])?;
        let principal = |name: &str| {
            Did::from_ucan_bytes(f.bytes(name)?)
                .map_err(|e| CodecError::schema(format!("ucan.{name}"), e.to_string()))
        };
        let version = f.string("v")?.to_string();
        if !version.starts_with("0.9.") {
            return Err(CodecError::schema(
                "ucan.v",
                format!("unsupported version {version:?}"),
            ));
        }
        let capabilities = match f.required("att")? {
            Ipld::List(items) => items
                .iter()
                .map(Capability::from_ipld)
                .collect::<Result<_, _>>()?,
            _ => return Err(CodecError::schema("ucan.att", "expected a list")),
        };
        if !matches!(f.required("exp")?, Ipld::Null | Ipld::Integer(_)) {
            return Err(CodecError::schema(
                "ucan.exp",
                "expected an integer or null",
            ));
        }
        let facts = match f.get("fct") {
            None => Vec::new(),
            Some(Ipld::List(items)) => items
                .iter()
                .map(|fact| match fact {
                    Ipld::Map(map) => Ok(map.clone()),
                    _ => Err(CodecError::schema("ucan.fct", "facts must be maps")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(CodecError::schema("ucan.fct", "expected a list")),
        };
        let proofs = if f.get("prf").is_some() {
            f.links("prf")?
        } else {
            Vec::new()
        };
        let signature = Signature::decode(f.bytes("s")?)
            .map_err(|e| CodecError::schema("ucan.s", e.to_string()))?;
        Ok(UcanData {
            version,
            issuer: principal("iss")?,
            audience: principal("aud")?,
            capabilities,
            expiration: f.opt_uint("exp", true)?,
            not_before: f.opt_uint("nbf", false)?,
            nonce: f.opt_string("nnc")?.map(str::to_string),
            facts,
            proofs,
            signature,
        })
    }

    /// Decodes a block straight into fields, with no IPLD tree in between,
    /// when it is canonical dag-cbor and a valid UCAN; also says whether it
    /// is written as JS or Go writes it ([`UcanData::is_written_as`]).
    /// `None` leaves the block to [`UcanData::from_ipld`] (which explains
    /// what is wrong with it): the two agree on every block, as a
    /// property test checks.
    pub(super) fn read_canonical(bytes: &[u8]) -> Option<(Self, bool)> {
        let mut r = crate::dag::canonical::Reader::new(bytes);
        let mut version = None;
        let (mut issuer, mut audience, mut signature) = (None, None, None);
        let mut capabilities = None;
        let mut expiration = None;
        let mut not_before = None;
        let mut nonce = None;
        let mut facts = None;
        let mut proofs = None;
        r.entries(|r, key| {
            match key {
                "v" => version = Some(r.string()?),
                "iss" => issuer = Some(r.byte_string()?),
                "aud" => audience = Some(r.byte_string()?),
                "att" => capabilities = Some(r.list(Capability::read_canonical)?),
                "exp" => expiration = Some(r.null_or_uint()?),
                "nbf" => not_before = Some(r.uint()?),
                "nnc" => nonce = Some(r.string()?),
                "fct" => {
                    facts = Some(r.list(|r| match r.any()? {
                        Ipld::Map(map) => Some(map),
                        _ => None,
                    })?)
                }
                "prf" => proofs = Some(r.links()?),
                "s" => signature = Some(r.byte_string()?),
                _ => return None,
            }
            Some(())
        })?;
        if !r.at_end() {
            return None;
        }
        let version = version.filter(|v| v.starts_with("0.9."))?;
        let (issuer_bytes, audience_bytes) = (issuer?, audience?);
        let signature_bytes = signature?;
        // What `is_written_as` checks of the optional fields: none is
        // written that both JS and Go leave out (`nbf: 0`, `fct: []`), and
        // `prf` and `nnc` are as one of the two writes them. JS writes `prf`
        // always, so a block with it is JS's shape; Go leaves out an empty
        // `prf` and an empty `nnc`, so a block without `prf` is Go's shape
        // unless it has `nnc: ""`.
        let optional_fields_written = not_before != Some(0)
            && facts.as_ref().is_none_or(|f| !f.is_empty())
            && (proofs.is_some() || nonce != Some(""));
        let data = UcanData {
            version: version.to_string(),
            issuer: Did::from_ucan_bytes(issuer_bytes).ok()?,
            audience: Did::from_ucan_bytes(audience_bytes).ok()?,
            capabilities: capabilities?,
            expiration: expiration?,
            not_before,
            nonce: nonce.map(str::to_string),
            facts: facts.unwrap_or_default(),
            proofs: proofs.unwrap_or_default(),
            signature: Signature::decode(signature_bytes).ok()?,
        };
        // And the byte fields are the ones these values write.
        let written = optional_fields_written
            && data.issuer.to_ucan_bytes() == issuer_bytes
            && data.audience.to_ucan_bytes() == audience_bytes
            && data.signature.encode() == signature_bytes;
        Some((data, written))
    }

    /// Links mentioned in capabilities (anywhere in `nb`) and at the top of facts:
    /// blocks an invocation may carry along with it ("attached" in JS @ucanto).
    pub fn attached_links(&self) -> Vec<Cid> {
        fn collect(value: &Ipld, out: &mut Vec<Cid>) {
            match value {
                Ipld::Link(cid) => out.push(*cid),
                Ipld::List(items) => items.iter().for_each(|v| collect(v, out)),
                Ipld::Map(map) => map.values().for_each(|v| collect(v, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        for cap in &self.capabilities {
            if let Some(nb) = &cap.nb {
                nb.values().for_each(|v| collect(v, &mut out));
            }
        }
        for fact in &self.facts {
            out.extend(fact.values().filter_map(|v| match v {
                Ipld::Link(cid) => Some(*cid),
                _ => None,
            }));
        }
        let mut seen = BTreeSet::new();
        out.retain(|cid| seen.insert(*cid));
        out
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn signing_payload(
    version: &str,
    signature_code: u64,
    issuer: &Did,
    audience: &Did,
    capabilities: &[Capability],
    expiration: Option<u64>,
    not_before: Option<u64>,
    nonce: Option<&str>,
    facts: &[IpldMap],
    proofs: &[Cid],
) -> Result<Vec<u8>, CodecError> {
    use crate::dag_json::{write_map, write_string};
    use std::fmt::Write;
    // Written directly, keys in the order dag-json sorts them: nothing is
    // copied into a map first (this runs for every UCAN verified).
    let mut header = String::with_capacity(48);
    header.push_str("{\"alg\":");
    write_string(
        &mut header,
        &crate::principal::algorithm_name(signature_code),
    );
    header.push_str(",\"typ\":\"JWT\",\"ucv\":");
    write_string(&mut header, version);
    header.push('}');

    let mut payload = String::with_capacity(512);
    payload.push_str("{\"att\":[");
    for (n, capability) in capabilities.iter().enumerate() {
        if n > 0 {
            payload.push(',');
        }
        payload.push_str("{\"can\":");
        write_string(&mut payload, &capability.can);
        if let Some(nb) = &capability.nb {
            payload.push_str(",\"nb\":");
            write_map(&mut payload, nb)?;
        }
        payload.push_str(",\"with\":");
        write_string(&mut payload, &capability.with);
        payload.push('}');
    }
    payload.push_str("],\"aud\":");
    write_string(&mut payload, audience.as_str());
    payload.push_str(",\"exp\":");
    match expiration {
        Some(exp) => {
            let _ = write!(payload, "{exp}");
        }
        None => payload.push_str("null"),
    }
    // The JSON form drops empty optionals, including an empty nonce.
    if !facts.is_empty() {
        payload.push_str(",\"fct\":[");
        for (n, fact) in facts.iter().enumerate() {
            if n > 0 {
                payload.push(',');
            }
            write_map(&mut payload, fact)?;
        }
        payload.push(']');
    }
    payload.push_str(",\"iss\":");
    write_string(&mut payload, issuer.as_str());
    if let Some(nbf) = not_before.filter(|n| *n != 0) {
        let _ = write!(payload, ",\"nbf\":{nbf}");
    }
    if let Some(nnc) = nonce.filter(|n| !n.is_empty()) {
        payload.push_str(",\"nnc\":");
        write_string(&mut payload, nnc);
    }
    payload.push_str(",\"prf\":[");
    for (n, proof) in proofs.iter().enumerate() {
        if n > 0 {
            payload.push(',');
        }
        payload.push('"');
        crate::dag_json::write_cid(&mut payload, proof);
        payload.push('"');
    }
    payload.push_str("]}");

    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut text = String::with_capacity((header.len() + payload.len()) * 4 / 3 + 4);
    b64.encode_string(header, &mut text);
    text.push('.');
    b64.encode_string(payload, &mut text);
    Ok(text.into_bytes())
}

/// Whether `value` is a list of exactly `links`.
pub(super) fn links_are(value: &Ipld, links: &[Cid]) -> bool {
    matches!(value, Ipld::List(list) if list.len() == links.len()
        && list.iter().zip(links).all(|(v, l)| *v == Ipld::Link(*l)))
}
