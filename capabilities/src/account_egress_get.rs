//! `account/egress/get`: an account's agent asks for the egress of the
//! account's spaces, per day.
//!
//! # Format
//! ```text
//! capability  { can: "account/egress/get", with: <account DID, did:mailto>,
//!               nb?: { spaces?: [<space DID, did:key>],
//!                      period?: { from: "YYYY-MM-DD" (inclusive), to: "YYYY-MM-DD" (exclusive) } } }
//! ok          { total: int,
//!               spaces: { <space DID>: { total: int, dailyStats: [{ date: "YYYY-MM-DD", egress: int }] } } }
//! error       { name: "AccountNotFound" | "SpaceUnauthorized" | "PeriodNotAcceptable", message: string }
//! ```
//! As in `@storacha/capabilities` 2.3.1 (`account/egress.js`): an empty `nb`
//! is left out on the wire; `from`/`to` are plain strings in the schema (the
//! handler checks them with [`Period::days`], at most [`MAX_PERIOD_DAYS`]).
//! A proof covers an invocation on the same account whose `spaces` are all
//! among the proof's (a proof naming spaces does not cover "all spaces"), and
//! whose `period.from`/`period.to` equal the proof's where it pins them
//! (`"*"` pins nothing).

use std::collections::BTreeMap;
use std::ops::Range;

use ucanto::dag::{Ipld, IpldMap};
use ucanto::principal::Did;

use crate::schema::{self, nb_or_empty, Fields};
use crate::{Ability, Outcome, Parsed, SchemaError};
use ucanto::validator::Violation;

/// Most days one `account/egress/get` period may span.
pub const MAX_PERIOD_DAYS: i64 = 60;

/// The `account/egress/get` capability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressGet;

/// Caveats of `account/egress/get`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressGetNb {
    /// The spaces asked about; `None` means all of the account's spaces.
    pub spaces: Option<Vec<Did>>,
    /// The days asked about; `None` lets the service choose.
    pub period: Option<Period>,
}

/// A period of days, as date-only ISO 8601 strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Period {
    /// First day (inclusive).
    pub from: String,
    /// Day after the last one (exclusive).
    pub to: String,
}

impl Period {
    /// The period `[from, to)`.
    pub fn new(from: impl Into<String>, to: impl Into<String>) -> Self {
        Period {
            from: from.into(),
            to: to.into(),
        }
    }

    /// The days of the period, as days since 1970-01-01: `from` inclusive,
    /// `to` exclusive. `PeriodNotAcceptable` unless both are `YYYY-MM-DD`
    /// dates, `from < to`, and the period spans at most [`MAX_PERIOD_DAYS`].
    pub fn days(&self) -> Result<Range<i64>, EgressGetError> {
        let not_acceptable = |message: String| EgressGetError::PeriodNotAcceptable { message };
        let from = parse_date(&self.from).ok_or_else(|| {
            not_acceptable(format!(
                "period.from {:?} is not a YYYY-MM-DD date",
                self.from
            ))
        })?;
        let to = parse_date(&self.to).ok_or_else(|| {
            not_acceptable(format!("period.to {:?} is not a YYYY-MM-DD date", self.to))
        })?;
        if to <= from {
            return Err(not_acceptable(format!(
                "period.to {} is not after period.from {}",
                self.to, self.from
            )));
        }
        if to - from > MAX_PERIOD_DAYS {
            return Err(not_acceptable(format!(
                "period {}..{} spans {} days, more than {MAX_PERIOD_DAYS}",
                self.from,
                self.to,
                to - from
            )));
        }
        Ok(from..to)
    }
}

/// Days since 1970-01-01 of a date-only ISO 8601 string (`YYYY-MM-DD`).
pub fn parse_date(date: &str) -> Option<i64> {
    let b = date.as_bytes();
    let digits = |r: Range<usize>| -> Option<i64> {
        b[r].iter().try_fold(0i64, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > month_days[(m - 1) as usize] {
        return None;
    }
    // Days from civil (H. Hinnant), with March as the first month of the year.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// The `YYYY-MM-DD` string of a day counted from 1970-01-01.
pub fn format_date(days: i64) -> String {
    // Civil from days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

impl Ability for EgressGet {
    const CAN: &'static str = "account/egress/get";
    type Nb = EgressGetNb;

    fn parse_with(with: &str) -> Result<Did, SchemaError> {
        schema::did("with", with, Some("mailto"))
    }

    fn parse_nb(nb: Option<&IpldMap>) -> Result<EgressGetNb, SchemaError> {
        let fields = Fields::new("nb", nb_or_empty(nb));
        let spaces = match fields.get("spaces") {
            None => None,
            Some(_) => Some(
                fields
                    .list("spaces")?
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let path = format!("nb.spaces[{i}]");
                        match item {
                            Ipld::String(did) => schema::did(&path, did, Some("key")),
                            _ => Err(SchemaError::wrong_type(path, "a string")),
                        }
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        let period = match fields.get("period") {
            None => None,
            Some(_) => {
                let period = fields.fields("period")?;
                Some(Period::new(period.string("from")?, period.string("to")?))
            }
        };
        Ok(EgressGetNb { spaces, period })
    }

    fn to_nb(nb: &EgressGetNb) -> IpldMap {
        let mut map = IpldMap::new();
        if let Some(spaces) = &nb.spaces {
            let spaces = spaces.iter().map(|s| Ipld::String(s.to_string())).collect();
            map.insert("spaces".into(), Ipld::List(spaces));
        }
        if let Some(period) = &nb.period {
            let period = IpldMap::from([
                ("from".to_string(), Ipld::String(period.from.clone())),
                ("to".to_string(), Ipld::String(period.to.clone())),
            ]);
            map.insert("period".into(), Ipld::Map(period));
        }
        map
    }

    /// JS: `equalWith`, spaces contained in the proof's, then `equal` on
    /// `period.from` and `period.to`.
    fn derives(
        claimed: &Parsed<EgressGetNb>,
        delegated: &Parsed<EgressGetNb>,
    ) -> Result<(), Violation> {
        if claimed.with != delegated.with {
            return Err(Violation::new(format!(
                "Can not derive {} with {} from {}",
                Self::CAN,
                claimed.with,
                delegated.with
            )));
        }
        let join = |dids: &[Did]| dids.iter().map(Did::as_str).collect::<Vec<_>>().join(",");
        if let Some(allowed) = &delegated.nb.spaces {
            let Some(asked) = &claimed.nb.spaces else {
                return Err(Violation::new(format!(
                    "Constraint violation: violates imposed spaces constraint {} because it asks for all spaces",
                    join(allowed)
                )));
            };
            if !asked.iter().all(|space| allowed.contains(space)) {
                return Err(Violation::new(format!(
                    "Constraint violation: {} violates imposed spaces constraint {} because it contains items not in the constraint",
                    join(asked),
                    join(allowed)
                )));
            }
        }
        let from = |nb: &EgressGetNb| nb.period.as_ref().map(|p| p.from.clone());
        let to = |nb: &EgressGetNb| nb.period.as_ref().map(|p| p.to.clone());
        equal(from(&claimed.nb), from(&delegated.nb), "period.from")?;
        equal(to(&claimed.nb), to(&delegated.nb), "period.to")
    }
}

/// JS `equal(child, parent, constraint)`: a missing or `"*"` parent pins nothing.
fn equal(child: Option<String>, parent: Option<String>, constraint: &str) -> Result<(), Violation> {
    match parent {
        None => Ok(()),
        Some(parent) if parent == "*" || child.as_deref() == Some(parent.as_str()) => Ok(()),
        Some(parent) => Err(Violation::new(format!(
            "Constraint violation: {} violates imposed {constraint} constraint {parent}",
            child.as_deref().unwrap_or("undefined")
        ))),
    }
}

/// Success of `account/egress/get`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressGetOk {
    /// Bytes over all the spaces.
    pub total: u64,
    /// Egress per space.
    pub spaces: BTreeMap<Did, SpaceEgress>,
}

/// Egress of one space.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpaceEgress {
    /// Bytes over the period.
    pub total: u64,
    /// Bytes per day.
    pub daily_stats: Vec<DailyStats>,
}

/// Egress of one space on one day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DailyStats {
    /// The day, `YYYY-MM-DD`.
    pub date: String,
    /// Bytes.
    pub egress: u64,
}

impl Outcome for EgressGetOk {
    fn to_ipld(&self) -> Ipld {
        let spaces = self
            .spaces
            .iter()
            .map(|(did, space)| {
                let stats = space
                    .daily_stats
                    .iter()
                    .map(|s| {
                        Ipld::Map(IpldMap::from([
                            ("date".to_string(), Ipld::String(s.date.clone())),
                            ("egress".to_string(), Ipld::Integer(s.egress.into())),
                        ]))
                    })
                    .collect();
                let value = IpldMap::from([
                    ("total".to_string(), Ipld::Integer(space.total.into())),
                    ("dailyStats".to_string(), Ipld::List(stats)),
                ]);
                (did.to_string(), Ipld::Map(value))
            })
            .collect();
        Ipld::Map(IpldMap::from([
            ("total".to_string(), Ipld::Integer(self.total.into())),
            ("spaces".to_string(), Ipld::Map(spaces)),
        ]))
    }

    fn from_ipld(value: &Ipld) -> Result<Self, SchemaError> {
        let fields = Fields::of("ok", value)?;
        let mut spaces = BTreeMap::new();
        let Ipld::Map(map) = fields.required("spaces")? else {
            return Err(SchemaError::wrong_type("ok.spaces", "a map"));
        };
        for (did, space) in map {
            let path = format!("ok.spaces[{did:?}]");
            let did = schema::did(&path, did, Some("key"))?;
            let space = Fields::of(path, space)?;
            let daily_stats = space
                .list("dailyStats")?
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let stat = Fields::of(format!("{}[{i}]", space.path("dailyStats")), item)?;
                    Ok(DailyStats {
                        date: stat.string("date")?.to_string(),
                        egress: stat.uint("egress")?,
                    })
                })
                .collect::<Result<_, SchemaError>>()?;
            spaces.insert(
                did,
                SpaceEgress {
                    total: space.uint("total")?,
                    daily_stats,
                },
            );
        }
        Ok(EgressGetOk {
            total: fields.uint("total")?,
            spaces,
        })
    }
}

/// Failure of `account/egress/get`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EgressGetError {
    /// The account is not known.
    #[error("AccountNotFound: {message}")]
    AccountNotFound {
        /// What went wrong.
        message: String,
    },
    /// A space asked for is not the account's.
    #[error("SpaceUnauthorized: {message}")]
    SpaceUnauthorized {
        /// What went wrong.
        message: String,
    },
    /// The period is malformed, reversed or too long.
    #[error("PeriodNotAcceptable: {message}")]
    PeriodNotAcceptable {
        /// What went wrong.
        message: String,
    },
}

impl EgressGetError {
    /// The error name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            EgressGetError::AccountNotFound { .. } => "AccountNotFound",
            EgressGetError::SpaceUnauthorized { .. } => "SpaceUnauthorized",
            EgressGetError::PeriodNotAcceptable { .. } => "PeriodNotAcceptable",
        }
    }

    fn message(&self) -> &str {
        match self {
            EgressGetError::AccountNotFound { message }
            | EgressGetError::SpaceUnauthorized { message }
            | EgressGetError::PeriodNotAcceptable { message } => message,
        }
    }
}

impl Outcome for EgressGetError {
    fn to_ipld(&self) -> Ipld {
        schema::failure(self.name(), self.message())
    }

    fn from_ipld(value: &Ipld) -> Result<Self, SchemaError> {
        let names = [
            "AccountNotFound",
            "SpaceUnauthorized",
            "PeriodNotAcceptable",
        ];
        let (name, message) = schema::read_failure(value, &names)?;
        Ok(match name {
            "AccountNotFound" => EgressGetError::AccountNotFound { message },
            "SpaceUnauthorized" => EgressGetError::SpaceUnauthorized { message },
            _ => EgressGetError::PeriodNotAcceptable { message },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX";
    const BOB: &str = "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH";
    const ACCOUNT: &str = "did:mailto:example.com:alice";

    fn parsed(spaces: Option<&[&str]>, period: Option<(&str, &str)>) -> Parsed<EgressGetNb> {
        Parsed {
            with: Did::parse(ACCOUNT).unwrap(),
            nb: EgressGetNb {
                spaces: spaces.map(|s| s.iter().map(|d| Did::parse(d).unwrap()).collect()),
                period: period.map(|(f, t)| Period::new(f, t)),
            },
        }
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2000-03-01"), Some(11017));
        assert_eq!(parse_date("2024-02-29"), Some(19782));
        for bad in [
            "2025-02-29",
            "2025-13-01",
            "2025-00-10",
            "2025-1-01",
            "2025-01-01T00:00:00Z",
            "２０２５-01-01",
            "",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        for days in [-1000, 0, 11017, 19782, 20089, 2_932_896] {
            assert_eq!(parse_date(&format_date(days)), Some(days));
        }
    }

    #[test]
    fn period_limits() {
        assert_eq!(
            Period::new("2025-01-01", "2025-02-01")
                .days()
                .unwrap()
                .count(),
            31
        );
        assert_eq!(
            Period::new("2025-01-01", "2025-03-02")
                .days()
                .unwrap()
                .count(),
            60
        );
        for (from, to) in [
            ("2025-01-01", "2025-03-03"),
            ("2025-02-01", "2025-01-01"),
            ("2025-01-01", "2025-01-01"),
            ("2025-01-01", "soon"),
        ] {
            let err = Period::new(from, to).days().unwrap_err();
            assert_eq!(err.name(), "PeriodNotAcceptable", "{from}..{to}");
        }
    }

    #[test]
    fn derives_like_js() {
        let both = [ALICE, BOB];
        let d = |c: &Parsed<EgressGetNb>, p: &Parsed<EgressGetNb>| EgressGet::derives(c, p);
        assert!(d(&parsed(Some(&[ALICE]), None), &parsed(Some(&both), None)).is_ok());
        assert!(d(&parsed(Some(&both), None), &parsed(Some(&[ALICE]), None))
            .unwrap_err()
            .message()
            .contains("spaces constraint"));
        assert!(d(&parsed(None, None), &parsed(Some(&[ALICE]), None))
            .unwrap_err()
            .message()
            .contains("asks for all spaces"));
        assert!(d(&parsed(None, None), &parsed(None, None)).is_ok());
        let jan = Some(("2025-01-01", "2025-02-01"));
        assert!(d(&parsed(None, jan), &parsed(None, jan)).is_ok());
        assert!(d(
            &parsed(None, Some(("2025-01-01", "2025-03-01"))),
            &parsed(None, jan)
        )
        .unwrap_err()
        .message()
        .contains("period.to"));
        assert!(d(&parsed(None, None), &parsed(None, jan))
            .unwrap_err()
            .message()
            .contains("undefined violates imposed period.from"));
        assert!(d(
            &parsed(None, Some(("2024-01-01", "2024-01-02"))),
            &parsed(None, Some(("*", "*")))
        )
        .is_ok());
        let mut other = parsed(None, None);
        other.with = Did::parse("did:mailto:example.com:bob").unwrap();
        assert!(d(&parsed(None, None), &other)
            .unwrap_err()
            .message()
            .starts_with("Can not derive"));
    }

    #[test]
    fn malformed_nb_names_the_field() {
        let cases: Vec<(IpldMap, &str)> = vec![
            (
                IpldMap::from([("spaces".to_string(), Ipld::Null)]),
                "nb.spaces: expected a list",
            ),
            (
                IpldMap::from([(
                    "spaces".to_string(),
                    Ipld::List(vec![Ipld::String(ALICE.into()), Ipld::Integer(1)]),
                )]),
                "nb.spaces[1]: expected a string",
            ),
            (
                IpldMap::from([(
                    "spaces".to_string(),
                    Ipld::List(vec![Ipld::String("did:web:space.example".into())]),
                )]),
                "nb.spaces[0]: expected a did:key: DID",
            ),
            (
                IpldMap::from([("period".to_string(), Ipld::Map(IpldMap::new()))]),
                "nb.period.from: missing",
            ),
            (
                IpldMap::from([(
                    "period".to_string(),
                    Ipld::Map(IpldMap::from([(
                        "from".to_string(),
                        Ipld::String("2025-01-01".into()),
                    )])),
                )]),
                "nb.period.to: missing",
            ),
        ];
        for (nb, message) in cases {
            let err = EgressGet::parse_nb(Some(&nb)).unwrap_err().to_string();
            assert!(err.starts_with(message), "{err} vs {message}");
        }
        assert_eq!(EgressGet::parse_nb(None).unwrap(), EgressGetNb::default());
        assert_eq!(EgressGet::parse_with(ALICE).unwrap_err().field(), "with");
        assert_eq!(
            EgressGet::parse_with("mailto:alice").unwrap_err().field(),
            "with"
        );
    }
}
