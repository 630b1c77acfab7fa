//! When the record that a retrieval was counted may go
//! ([`Conclusions::drop_ended_claims`](crate::store::Conclusions::drop_ended_claims)).
//!
//! Table `claim_ends`: (end, retrieval payload id) → (), written with each
//! entry of `counted` in the conclusion's transaction: `end` is the
//! conclusion's `claims_end`, after which no batch could count the
//! retrieval again (see [`etracker_capabilities::payable::Rules::claim_ends`]).
//! A sweep removes both entries of every claim that has ended, a page at a
//! time, and adds them to `meta`'s `claims_dropped`, which the audit counts
//! with the claims still kept.

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::{OrBackend, COUNTED, META};
use crate::store::StoreError;

/// (end, retrieval) → (): every claim by when it ends.
pub(super) const CLAIM_ENDS: TableDefinition<(u64, &[u8]), ()> = TableDefinition::new("claim_ends");

/// `meta` key: claims dropped so far.
pub(super) const DROPPED_KEY: &str = "claims_dropped";

/// Claims dropped per write transaction.
const PAGE: usize = 10_000;

/// Notes that the claim on `retrieval` ends at `end`.
pub(super) fn noted(
    table: &mut redb::Table<'_, (u64, &'static [u8]), ()>,
    end: u64,
    retrieval: &[u8],
) -> Result<(), StoreError> {
    table.insert((end, retrieval), ()).or_backend()?;
    Ok(())
}

/// Drops, in `tx`, up to a page of claims that ended before `now`; how
/// many (fewer than a page: none are left).
pub(super) fn drop_page(tx: &WriteTransaction, now: u64) -> Result<usize, StoreError> {
    let mut ends = tx.open_table(CLAIM_ENDS).or_backend()?;
    let mut counted = tx.open_table(COUNTED).or_backend()?;
    let mut ended: Vec<(u64, Vec<u8>)> = Vec::new();
    for entry in ends.range(..(now, &[][..])).or_backend()? {
        let (key, _) = entry.or_backend()?;
        let (end, retrieval) = key.value();
        ended.push((end, retrieval.to_vec()));
        if ended.len() == PAGE {
            break;
        }
    }
    for (end, retrieval) in &ended {
        ends.remove((*end, retrieval.as_slice())).or_backend()?;
        counted.remove(retrieval.as_slice()).or_backend()?;
    }
    let mut meta = tx.open_table(META).or_backend()?;
    let dropped = meta.get(DROPPED_KEY).or_backend()?.map_or(0, |v| v.value());
    meta.insert(DROPPED_KEY, dropped + ended.len() as u64)
        .or_backend()?;
    Ok(ended.len())
}
