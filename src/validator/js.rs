//! Renders values the way JS does inside @ucanto error messages
//! (`JSON.stringify`, `String(value)`, `Date.prototype.toString` in UTC), so
//! our messages are byte-identical to the ones a JS service puts in receipts.

use crate::dag::{Ipld, IpldMap};
use crate::ucan::Capability;

/// `indent` of @ucanto: every line shifted by two spaces.
pub(crate) fn indent(message: &str) -> String {
    format!("  {}", message.replace('\n', "\n  "))
}

/// `li` of @ucanto: a bullet, continuation lines aligned under it.
pub(crate) fn li(message: &str) -> String {
    indent(&format!("- {message}"))
}

/// `JSON.stringify(string)`.
pub(crate) fn json_string(s: &str) -> String {
    // serde_json escapes exactly the characters JSON.stringify escapes
    // (quote, backslash, C0 controls; lowercase \u00XX).
    serde_json::to_string(s).unwrap_or_default()
}

/// `String(number)`.
pub(crate) fn number(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if f == 0.0 {
        // Also -0, which JS prints as "0".
        return "0".into();
    }
    let abs = f.abs();
    if (1e-6..1e21).contains(&abs) {
        // Rust's shortest round-trip digits equal JS's in this range.
        format!("{f}")
    } else {
        let s = format!("{f:e}");
        match s.split_once('e') {
            Some((mantissa, exp)) if !exp.starts_with('-') => format!("{mantissa}e+{exp}"),
            _ => s,
        }
    }
}

/// Largest integer JS reads as a plain number; dag-cbor decoders in JS turn
/// larger ones into BigInt.
const MAX_SAFE_INTEGER: i128 = (1 << 53) - 1;

/// Keys in the order a JS object decoded from dag-cbor enumerates them:
/// array-index keys first (ascending), then the rest in dag-cbor order
/// (shorter first, then bytewise) — the order the decoder inserted them.
pub(crate) fn key_order(map: &IpldMap) -> Vec<&String> {
    let index = |k: &str| -> Option<u32> {
        let n: u32 = k.parse().ok()?;
        (n != u32::MAX && n.to_string() == k).then_some(n)
    };
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_by(|a, b| match (index(a), index(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a
            .len()
            .cmp(&b.len())
            .then_with(|| a.as_bytes().cmp(b.as_bytes())),
    });
    keys
}

/// `JSON.stringify(value)` of a value decoded by @ipld/dag-cbor.
pub(crate) fn json(value: &Ipld) -> String {
    let mut out = String::new();
    write_json(&mut out, value);
    out
}

fn write_json(out: &mut String, value: &Ipld) {
    match value {
        Ipld::Null => out.push_str("null"),
        Ipld::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Ipld::Integer(i) => out.push_str(&i.to_string()),
        Ipld::Float(f) if f.is_finite() => out.push_str(&number(*f)),
        Ipld::Float(_) => out.push_str("null"),
        Ipld::String(s) => out.push_str(&json_string(s)),
        // A Uint8Array stringifies as an object keyed by index.
        Ipld::Bytes(bytes) => {
            out.push('{');
            for (n, b) in bytes.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push_str(&format!("\"{n}\":{b}"));
            }
            out.push('}');
        }
        // CID#toJSON.
        Ipld::Link(cid) => out.push_str(&format!("{{\"/\":\"{cid}\"}}")),
        Ipld::List(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_json(out, item);
            }
            out.push(']');
        }
        Ipld::Map(map) => {
            out.push('{');
            for (n, key) in key_order(map).into_iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push_str(&json_string(key));
                out.push(':');
                write_json(out, &map[key]);
            }
            out.push('}');
        }
    }
}

/// `JSON.stringify(capability)` of a capability decoded from a UCAN block:
/// its fields come in dag-cbor order, `nb` first.
pub(crate) fn raw_capability(capability: &Capability) -> String {
    let mut out = String::from("{");
    if let Some(nb) = &capability.nb {
        out.push_str("\"nb\":");
        out.push_str(&json(&Ipld::Map(nb.clone())));
        out.push(',');
    }
    out.push_str(&format!(
        "\"can\":{},\"with\":{}}}",
        json_string(&capability.can),
        json_string(&capability.with)
    ));
    out
}

/// `Match#toString()`: a parsed capability, `nb` omitted when empty.
pub(crate) fn parsed_capability(can: &str, capability: &Capability) -> String {
    let mut out = format!(
        "{{\"can\":{},\"with\":{}",
        json_string(can),
        json_string(&capability.with)
    );
    if let Some(nb) = capability.nb.as_ref().filter(|nb| !nb.is_empty()) {
        out.push_str(",\"nb\":");
        out.push_str(&json(&Ipld::Map(nb.clone())));
    }
    out.push('}');
    out
}

/// `String(value)` (template-literal interpolation); `None` is `undefined`.
pub(crate) fn string(value: Option<&Ipld>) -> String {
    match value {
        None => "undefined".into(),
        Some(Ipld::Null) => "null".into(),
        Some(Ipld::Bool(b)) => b.to_string(),
        Some(Ipld::Integer(i)) => i.to_string(),
        Some(Ipld::Float(f)) => number(*f),
        Some(Ipld::String(s)) => s.clone(),
        // Uint8Array#toString joins the bytes.
        Some(Ipld::Bytes(bytes)) => bytes
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(","),
        Some(Ipld::Link(cid)) => cid.to_string(),
        // Array#toString: elements joined, null and undefined as "".
        Some(Ipld::List(items)) => items
            .iter()
            .map(|item| match item {
                Ipld::Null => String::new(),
                other => string(Some(other)),
            })
            .collect::<Vec<_>>()
            .join(","),
        Some(Ipld::Map(_)) => "[object Object]".into(),
    }
}

/// `toString` of @ucanto/core's schema module, used in `TypeError` messages.
pub(crate) fn schema_string(value: Option<&Ipld>) -> String {
    match value {
        None => "undefined".into(),
        Some(Ipld::Null) => "null".into(),
        Some(Ipld::Bool(b)) => b.to_string(),
        Some(Ipld::String(s)) => json_string(s),
        Some(Ipld::Integer(i)) if i.abs() <= MAX_SAFE_INTEGER => i.to_string(),
        Some(Ipld::Integer(i)) => format!("{i}n"),
        Some(Ipld::Float(f)) => number(*f),
        Some(Ipld::List(_)) => "array".into(),
        // Symbol.toStringTag of Uint8Array and CID.
        Some(Ipld::Bytes(_)) => "Uint8Array".into(),
        Some(Ipld::Link(_)) => "CID".into(),
        Some(Ipld::Map(_)) => "object".into(),
    }
}

/// JS loose inequality `a != b` as @ucanto's default `derives` uses it, with
/// one deliberate difference: objects (links, bytes, lists, maps) compare by
/// value, where JS compares references.
pub(crate) fn loosely_equal(a: Option<&Ipld>, b: Option<&Ipld>) -> bool {
    match (a, b) {
        (None | Some(Ipld::Null), None | Some(Ipld::Null)) => true,
        (Some(Ipld::Integer(x)), Some(Ipld::Float(y)))
        | (Some(Ipld::Float(y)), Some(Ipld::Integer(x))) => *x as f64 == *y,
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `new Date(secs * 1000).toString()` in the UTC zone, as JS services run.
pub(crate) fn date(secs: u64) -> String {
    // JS dates end at ±8.64e15 ms.
    if secs > 8_640_000_000_000 {
        return "Invalid Date".into();
    }
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{} {} {:02} {:04} {:02}:{:02}:{:02} GMT+0000 (Coordinated Universal Time)",
        WEEKDAYS[((days + 4) % 7) as usize], // 1970-01-01 was a Thursday
        MONTHS[(month - 1) as usize],
        day,
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_js() {
        assert_eq!(
            date(1_600_000_000),
            "Sun Sep 13 2020 12:26:40 GMT+0000 (Coordinated Universal Time)"
        );
        assert_eq!(
            date(4_000_000_000),
            "Tue Oct 02 2096 07:06:40 GMT+0000 (Coordinated Universal Time)"
        );
        assert_eq!(
            date(0),
            "Thu Jan 01 1970 00:00:00 GMT+0000 (Coordinated Universal Time)"
        );
        assert_eq!(
            date(951_782_400),
            "Tue Feb 29 2000 00:00:00 GMT+0000 (Coordinated Universal Time)"
        );
        assert_eq!(
            date(8_640_000_000_000),
            "Sat Sep 13 275760 00:00:00 GMT+0000 (Coordinated Universal Time)"
        );
        assert_eq!(date(8_640_000_000_001), "Invalid Date");
    }

    #[test]
    fn values_render_like_js() {
        let mut map = IpldMap::new();
        map.insert("with".into(), Ipld::Bytes(vec![1, 2]));
        map.insert("10".into(), Ipld::Float(1e21));
        map.insert("2".into(), Ipld::Float(-0.0));
        map.insert(
            "nb".into(),
            Ipld::List(vec![Ipld::Null, Ipld::Float(1.5e-7)]),
        );
        assert_eq!(
            json(&Ipld::Map(map)),
            r#"{"2":0,"10":1e+21,"nb":[null,1.5e-7],"with":{"0":1,"1":2}}"#
        );
        assert_eq!(
            string(Some(&Ipld::List(vec![
                Ipld::Integer(1),
                Ipld::Null,
                Ipld::String("a".into())
            ]))),
            "1,,a"
        );
        assert_eq!(
            schema_string(Some(&Ipld::Integer(1 << 60))),
            "1152921504606846976n"
        );
        assert_eq!(li("a\nb"), "  - a\n  b");
    }
}
