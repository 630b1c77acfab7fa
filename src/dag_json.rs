//! dag-json, as @ipld/dag-json writes it.
//!
//! UCAN signatures are computed over a JWT-style string whose payload is the
//! dag-json encoding of the UCAN, so the encoder must match JS to the byte:
//! keys in UTF-16 code-unit order, strings escaped like `JSON.stringify`,
//! links as `{"/": "bafy…"}` and bytes as `{"/": {"bytes": "<base64, no padding>"}}`.

use base64::Engine;
use cid::Cid;

use crate::dag::{CodecError, Ipld, IpldMap};

/// Encodes an IPLD value as dag-json bytes.
pub fn encode(value: &Ipld) -> Result<Vec<u8>, CodecError> {
    let mut out = String::new();
    write_value(&mut out, value)?;
    Ok(out.into_bytes())
}

/// Encodes an IPLD value as a dag-json string.
pub fn to_string(value: &Ipld) -> Result<String, CodecError> {
    let mut out = String::new();
    write_value(&mut out, value)?;
    Ok(out)
}

/// Appends the dag-json of `value` to `out`.
pub(crate) fn write_value(out: &mut String, value: &Ipld) -> Result<(), CodecError> {
    match value {
        Ipld::Null => out.push_str("null"),
        Ipld::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Ipld::Integer(i) => {
            use std::fmt::Write;
            let _ = write!(out, "{i}");
        }
        Ipld::Float(f) => write_float(out, *f)?,
        Ipld::String(s) => write_string(out, s),
        Ipld::Bytes(b) => {
            out.push_str("{\"/\":{\"bytes\":\"");
            base64::engine::general_purpose::STANDARD_NO_PAD.encode_string(b, out);
            out.push_str("\"}}");
        }
        Ipld::Link(cid) => {
            out.push_str("{\"/\":\"");
            write_cid(out, cid);
            out.push_str("\"}");
        }
        Ipld::List(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_value(out, item)?;
            }
            out.push(']');
        }
        Ipld::Map(map) => write_map(out, map)?,
    }
    Ok(())
}

/// Appends `cid` as text (`b…` base32 for CIDv1, `Qm…` for CIDv0), with
/// no allocation for v1: every UCAN's signing payload names its proofs so.
pub(crate) fn write_cid(out: &mut String, cid: &Cid) {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    if cid.version() == cid::Version::V0 {
        return out.push_str(&cid.to_string());
    }
    let bytes = crate::dag::CidBytes::of(cid);
    out.reserve(1 + (bytes.len() * 8).div_ceil(5));
    out.push('b');
    let (mut bits, mut pending) = (0u32, 0u32);
    for byte in bytes.iter() {
        pending = (pending << 8) | u32::from(*byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((pending >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((pending << (5 - bits)) & 31) as usize] as char);
    }
}

/// Appends the dag-json of the map `map` to `out`.
pub(crate) fn write_map(out: &mut String, map: &IpldMap) -> Result<(), CodecError> {
    // JS compares strings by UTF-16 code units, which differs from Rust's
    // byte order (the map's) only for characters above U+FFFF (4 UTF-8 bytes).
    let astral = |k: &String| k.bytes().any(|b| b >= 0xf0);
    out.push('{');
    if map.keys().any(astral) {
        let mut entries: Vec<(&String, &Ipld)> = map.iter().collect();
        entries.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
        write_entries(out, entries)?;
    } else {
        write_entries(out, map.iter())?;
    }
    out.push('}');
    Ok(())
}

fn write_entries<'a>(
    out: &mut String,
    entries: impl IntoIterator<Item = (&'a String, &'a Ipld)>,
) -> Result<(), CodecError> {
    for (n, (key, value)) in entries.into_iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        write_string(out, key);
        out.push(':');
        write_value(out, value)?;
    }
    Ok(())
}

/// Escapes like `JSON.stringify`: only `"`, `\` and control characters.
pub(crate) fn write_string(out: &mut String, s: &str) {
    out.push('"');
    // Most strings (DIDs, abilities, URLs) need no escape: one copy.
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{0c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Formats a float like JS `String(number)`, plus the `.0` dag-json adds to integral floats.
fn write_float(out: &mut String, f: f64) -> Result<(), CodecError> {
    if !f.is_finite() {
        return Err(CodecError::Encode(
            "NaN and infinities are not in the IPLD data model".into(),
        ));
    }
    let abs = f.abs();
    let text = if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        // Rust's `{:e}` gives the shortest round-trip digits, like JS; JS adds a sign to the exponent.
        let s = format!("{f:e}");
        match s.split_once('e') {
            Some((mantissa, exp)) if !exp.starts_with('-') => format!("{mantissa}e+{exp}"),
            _ => s,
        }
    } else {
        format!("{f}")
    };
    out.push_str(&text);
    if !text.contains(['.', 'e', 'E']) {
        out.push_str(".0");
    }
    Ok(())
}

/// Decodes dag-json text into an IPLD value.
pub fn decode(text: &str) -> Result<Ipld, CodecError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| CodecError::InvalidCbor(e.to_string()))?;
    from_json(&value)
}

/// Converts a parsed JSON value using the dag-json conventions for links and bytes.
pub fn from_json(value: &serde_json::Value) -> Result<Ipld, CodecError> {
    use serde_json::Value;
    Ok(match value {
        Value::Null => Ipld::Null,
        Value::Bool(b) => Ipld::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ipld::Integer(i.into())
            } else if let Some(u) = n.as_u64() {
                Ipld::Integer(u.into())
            } else {
                Ipld::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => Ipld::String(s.clone()),
        Value::Array(items) => Ipld::List(items.iter().map(from_json).collect::<Result<_, _>>()?),
        Value::Object(map) => {
            if let (1, Some(slash)) = (map.len(), map.get("/")) {
                match slash {
                    Value::String(cid) => {
                        let cid: Cid = cid
                            .parse()
                            .map_err(|e| CodecError::schema("dag-json link", format!("{e}")))?;
                        return Ok(Ipld::Link(cid));
                    }
                    Value::Object(inner) if inner.len() == 1 => {
                        if let Some(Value::String(b64)) = inner.get("bytes") {
                            let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
                                .decode(b64.trim_end_matches('='))
                                .map_err(|e| CodecError::schema("dag-json bytes", e.to_string()))?;
                            return Ok(Ipld::Bytes(bytes));
                        }
                    }
                    _ => {}
                }
            }
            let mut out = IpldMap::new();
            for (k, v) in map {
                out.insert(k.clone(), from_json(v)?);
            }
            Ipld::Map(out)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Links read as the cid crate writes them, whatever their codec,
        /// hash and length, v0 included.
        #[test]
        fn links_write_as_the_cid_crate_does(
            codec in proptest::prop_oneof![
                proptest::strategy::Just(0x55u64),
                proptest::strategy::Just(0x71),
                proptest::strategy::Just(0x0202),
                proptest::num::u64::ANY,
            ],
            digest in proptest::collection::vec(proptest::num::u8::ANY, 0..=64),
            v0 in proptest::bool::ANY,
        ) {
            let cid = if v0 {
                let hash = cid::multihash::Multihash::<64>::wrap(0x12, &[7; 32]).unwrap();
                Cid::new_v0(hash).unwrap()
            } else {
                let hash = cid::multihash::Multihash::<64>::wrap(0x12, &digest).unwrap();
                Cid::new_v1(codec, hash)
            };
            let mut written = String::new();
            write_cid(&mut written, &cid);
            proptest::prop_assert_eq!(written, cid.to_string());
        }
    }

    #[test]
    fn encodes_like_js() {
        let mut map = IpldMap::new();
        map.insert("b".into(), Ipld::Bytes(vec![1, 2, 3]));
        map.insert("aa".into(), Ipld::String("quote\" tab\t ü\u{1}".into()));
        map.insert(
            "a".into(),
            Ipld::List(vec![Ipld::Integer(-5), Ipld::Null, Ipld::Float(1.0)]),
        );
        let text = to_string(&Ipld::Map(map)).unwrap();
        assert_eq!(
            text,
            r#"{"a":[-5,null,1.0],"aa":"quote\" tab\t ü\u0001","b":{"/":{"bytes":"AQID"}}}"#
        );
    }

    /// Keys sort as JS sorts strings, by UTF-16 code unit: a character
    /// above U+FFFF (a surrogate pair, from 0xD800) before U+FF61, which
    /// sorts after it byte-wise.
    #[test]
    fn keys_sort_by_utf16_code_units() {
        let map = IpldMap::from([
            ("\u{ff61}".to_string(), Ipld::Integer(1)),
            ("\u{1f600}".to_string(), Ipld::Integer(2)),
            ("a".to_string(), Ipld::Integer(3)),
        ]);
        assert_eq!(
            to_string(&Ipld::Map(map)).unwrap(),
            "{\"a\":3,\"\u{1f600}\":2,\"\u{ff61}\":1}"
        );
    }

    #[test]
    fn floats_follow_js_number_formatting() {
        let f = |x: f64| to_string(&Ipld::Float(x)).unwrap();
        assert_eq!(f(0.5), "0.5");
        assert_eq!(f(1e21), "1e+21");
        assert_eq!(f(1.5e-7), "1.5e-7");
        assert_eq!(f(123456.0), "123456.0");
    }

    #[test]
    fn decode_round_trips() {
        let text = r#"{"a":[1,{"/":"bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"}],"b":{"/":{"bytes":"AQID"}}}"#;
        let value = decode(text).unwrap();
        assert_eq!(to_string(&value).unwrap(), text);
    }
}
