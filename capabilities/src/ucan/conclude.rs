//! `ucan/conclude`: a receipt, delivered as an invocation.
//!
//! # Format
//! ```text
//! capability  { can: "ucan/conclude", with: <DID of the ran invocation's audience>,
//!               nb: { receipt: Link<receipt> } }
//! ok          { time: int }
//! ```
//! A proof covers an invocation with the same `with` and the same receipt.

use cid::Cid;
use ucanto::dag::{Ipld, IpldMap};

use crate::schema::{nb_or_empty, Fields};
use crate::{Ability, Outcome, Parsed, SchemaError};
use ucanto::validator::Violation;

/// The `ucan/conclude` capability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UcanConclude;

/// Caveats of `ucan/conclude`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UcanConcludeNb {
    /// The receipt.
    pub receipt: Cid,
}

impl Ability for UcanConclude {
    const CAN: &'static str = "ucan/conclude";
    type Nb = UcanConcludeNb;

    fn parse_nb(nb: Option<&IpldMap>) -> Result<UcanConcludeNb, SchemaError> {
        Ok(UcanConcludeNb {
            receipt: Fields::new("nb", nb_or_empty(nb)).link("receipt")?,
        })
    }

    fn to_nb(nb: &UcanConcludeNb) -> IpldMap {
        IpldMap::from([("receipt".to_string(), Ipld::Link(nb.receipt))])
    }

    fn derives(
        claimed: &Parsed<UcanConcludeNb>,
        delegated: &Parsed<UcanConcludeNb>,
    ) -> Result<(), Violation> {
        super::equal_with(Self::CAN, &claimed.with, &delegated.with)?;
        super::check_link(&claimed.nb.receipt, &delegated.nb.receipt, "nb.receipt")
    }
}

/// Success of `ucan/conclude`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UcanConcludeOk {
    /// When the receipt was taken in (Unix time, as the service reports it).
    pub time: u64,
}

impl Outcome for UcanConcludeOk {
    fn to_ipld(&self) -> Ipld {
        Ipld::Map(IpldMap::from([(
            "time".to_string(),
            Ipld::Integer(self.time.into()),
        )]))
    }

    fn from_ipld(value: &Ipld) -> Result<Self, SchemaError> {
        Ok(UcanConcludeOk {
            time: Fields::of("ok", value)?.uint("time")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ucanto::principal::Did;

    #[test]
    fn parse_derive_and_result() {
        let receipt: Cid = "bafyreidlj3mk56xjd5sursikr4q7rcbhnglby3m3pjsj2kb23ee3lq3jtu"
            .parse()
            .unwrap();
        let other: Cid = "bafyreibziqc6kwghhjur2n6w4zp2bgnyykqklcy6ezlv2t2ru3xs3nofxm"
            .parse()
            .unwrap();
        let with = Did::parse("did:web:tracker.example").unwrap();
        let capability = UcanConclude::capability(&with, &UcanConcludeNb { receipt });
        let parsed = UcanConclude::parse(&capability).unwrap();
        assert_eq!(parsed.nb.receipt, receipt);
        let pinned = Parsed {
            with: with.clone(),
            nb: UcanConcludeNb { receipt: other },
        };
        assert!(UcanConclude::derives(&parsed, &parsed).is_ok());
        assert!(UcanConclude::derives(&parsed, &pinned)
            .unwrap_err()
            .message()
            .contains("nb.receipt constraint"));
        assert_eq!(
            UcanConclude::parse_nb(None).unwrap_err().to_string(),
            "nb.receipt: missing"
        );

        let ok = UcanConcludeOk {
            time: 1_750_000_000,
        };
        assert_eq!(UcanConcludeOk::from_ipld(&ok.to_ipld()).unwrap(), ok);
        assert_eq!(
            UcanConcludeOk::from_ipld(&Ipld::Map(IpldMap::new()))
                .unwrap_err()
                .to_string(),
            "ok.time: missing"
        );
    }
}
