//! UCAN core capabilities from `@storacha/capabilities` 2.3.1 (`ucan.js`):
//! [`conclude`] (a receipt as an invocation) and [`attest`] (a trusted
//! authority vouches for a delegation, e.g. one signed by a did:mailto
//! account).

pub mod attest;
pub mod conclude;

pub use attest::UcanAttest;
pub use conclude::UcanConclude;

use cid::Cid;
use ucanto::validator::Violation;

/// JS `checkLink(claimed, imposed, at)`: the links must be equal.
fn check_link(claimed: &Cid, imposed: &Cid, at: &str) -> Result<(), Violation> {
    if claimed == imposed {
        Ok(())
    } else {
        Err(Violation::new(format!(
            "Constraint violation: {claimed} violates imposed {at} constraint {imposed}"
        )))
    }
}

/// JS `equalWith`.
fn equal_with(
    can: &str,
    claimed: &ucanto::principal::Did,
    delegated: &ucanto::principal::Did,
) -> Result<(), Violation> {
    if claimed == delegated {
        Ok(())
    } else {
        Err(Violation::new(format!(
            "Can not derive {can} with {claimed} from {delegated}"
        )))
    }
}
