//! Checks and helpers every backend shares, so that each decides exactly
//! as the others do.

use cid::Cid;
use ucanto::principal::Did;

use super::{Conclusion, EgressRecord, RecordStatus, StoreError};

/// A DID read back from the store.
pub(crate) fn parse_did(text: &str) -> Result<Did, StoreError> {
    Did::parse(text).map_err(|e| StoreError::Corrupt(format!("{text}: {e}")))
}

/// The refusal to open a store written in another format.
pub(crate) fn unsupported_format(found: u64, expected: u64) -> StoreError {
    let why = match found {
        1 => {
            " (format 1 knows counted retrievals by invocation CID, which a node can \
               change by re-encoding; it cannot be converted: let the old version \
               conclude its pending batches, then start this one on a new store)"
        }
        _ => "",
    };
    StoreError::Corrupt(format!(
        "store format {found} is not supported: this etracker reads format {expected}{why}"
    ))
}

/// Steps 2 and 3 of [`Conclusions::conclude`](super::Conclusions::conclude):
/// the conclusion must be for the record's task and node; `Some(receipt)`
/// when the record is done already.
pub(crate) fn check_record(
    record: &EgressRecord,
    c: &Conclusion,
) -> Result<Option<Cid>, StoreError> {
    if record.consolidate_invocation != c.consolidate_invocation {
        return Err(StoreError::Mismatch(format!(
            "consolidate invocation is {}, not {}",
            record.consolidate_invocation, c.consolidate_invocation
        )));
    }
    if record.node != c.node {
        return Err(StoreError::Mismatch(format!(
            "tracked by {}, not {}",
            record.node, c.node
        )));
    }
    Ok(match record.status {
        RecordStatus::Done { receipt, .. } => Some(receipt),
        RecordStatus::Pending => None,
    })
}

/// The end of a lease of `lease_secs` taken at `now`
/// ([`Records::lease_pending`](super::Records::lease_pending)).
pub(crate) fn lease_end(now: u64, lease_secs: u64) -> Result<u64, StoreError> {
    if lease_secs == 0 {
        return Err(StoreError::Invalid("a lease must last at least 1 s".into()));
    }
    now.checked_add(lease_secs)
        .ok_or_else(|| StoreError::Invalid("lease end overflows u64".into()))
}

/// Checks the days of a `from..to` range; false when the range is empty.
pub(crate) fn check_day_range(from: &str, to: &str) -> Result<bool, StoreError> {
    check_day(from)?;
    check_day(to)?;
    Ok(from < to)
}

/// Checks that `day` is a `YYYY-MM-DD` date, so that byte order is date order.
pub(crate) fn check_day(day: &str) -> Result<(), StoreError> {
    let b = day.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && digits(0..4)
        && digits(5..7)
        && digits(8..10)
        && (1..=12).contains(&((b[5] - b'0') * 10 + (b[6] - b'0')))
        && (1..=31).contains(&((b[8] - b'0') * 10 + (b[9] - b'0')));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "day {day:?} is not YYYY-MM-DD"
        )))
    }
}

/// Checks what [`Conclusions::conclude`](super::Conclusions::conclude) step 1
/// requires and returns the usage summed per (space, day) and per day, so
/// backends add each key once.
pub(crate) fn check_conclusion(c: &Conclusion) -> Result<SummedUsage, StoreError> {
    if c.receipt_bytes.len() > super::MAX_RECEIPT_BYTES {
        return Err(StoreError::Invalid(format!(
            "the receipt is {} bytes, over the {} a store keeps in one item",
            c.receipt_bytes.len(),
            super::MAX_RECEIPT_BYTES
        )));
    }
    let mut summed = SummedUsage::default();
    let mut total: u64 = 0;
    let overflow = || StoreError::Invalid("byte counts overflow u64".into());
    for u in &c.usage {
        check_day(&u.day)?;
        total = total.checked_add(u.bytes).ok_or_else(overflow)?;
        let space_day = summed
            .by_space_day
            .entry((u.space.as_str().to_string(), u.day.clone()))
            .or_default();
        *space_day = space_day.checked_add(u.bytes).ok_or_else(overflow)?;
        let day = summed.by_day.entry(u.day.clone()).or_default();
        *day = day.checked_add(u.bytes).ok_or_else(overflow)?;
    }
    if total != c.total_bytes {
        return Err(StoreError::Invalid(format!(
            "total_bytes {} is not the sum of usage {total}",
            c.total_bytes
        )));
    }
    for u in &c.non_billable {
        check_day(&u.day)?;
        let space_day = summed
            .non_billable
            .entry((u.space.as_str().to_string(), u.day.clone()))
            .or_default();
        *space_day = space_day.checked_add(u.bytes).ok_or_else(overflow)?;
    }
    let mut seen = std::collections::HashSet::with_capacity(c.counted_receipts.len());
    if let Some(dup) = c
        .counted_receipts
        .iter()
        .find(|r| !seen.insert(r.retrieval))
    {
        return Err(StoreError::Invalid(format!(
            "receipt {} listed twice",
            dup.retrieval
        )));
    }
    Ok(summed)
}

/// The counted retrievals of the staged tally chunk `link` of `batch`,
/// `bytes` (`None`: not staged).
pub(crate) fn staged_counted(
    batch: &Cid,
    link: &Cid,
    bytes: Option<Vec<u8>>,
) -> Result<Vec<super::CountedRetrieval>, StoreError> {
    Ok(staged_chunk(batch, link, bytes)?.counted)
}

/// The tally chunk `link` of `batch` as `bytes` (`None`: not staged), which
/// must hash to it and name the batch.
pub(crate) fn staged_chunk(
    batch: &Cid,
    link: &Cid,
    bytes: Option<Vec<u8>>,
) -> Result<crate::tally::Chunk, StoreError> {
    let bytes =
        bytes.ok_or_else(|| StoreError::Invalid(format!("tally chunk {link} is not staged")))?;
    let block = crate::tally::staged_block(link, bytes).ok_or_else(|| {
        StoreError::Corrupt(format!("staged chunk {link} does not hash to its CID"))
    })?;
    crate::tally::Chunk::decode(batch, &block)
        .map_err(|e| StoreError::Invalid(format!("tally chunk {link}: {e}")))
}

/// A conclusion's usage with repeated keys added up.
#[derive(Debug, Default)]
pub(crate) struct SummedUsage {
    /// (space DID, day) → bytes.
    pub(crate) by_space_day: std::collections::BTreeMap<(String, String), u64>,
    /// day → bytes (the node's daily totals).
    pub(crate) by_day: std::collections::BTreeMap<String, u64>,
    /// (space DID, day) → bytes of non-billable retrievals.
    pub(crate) non_billable: std::collections::BTreeMap<(String, String), u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Cid` in a variant would make every `Result` of the store 128+ bytes
    /// and trip clippy's `result_large_err` in every caller.
    #[test]
    fn errors_stay_small() {
        assert!(std::mem::size_of::<StoreError>() <= 48);
    }

    #[test]
    fn days_must_be_iso_dates() {
        for good in ["2025-01-01", "1999-12-31"] {
            assert!(check_day(good).is_ok(), "{good}");
        }
        for bad in [
            "2025-1-01",
            "2025-13-01",
            "2025-00-10",
            "2025-01-32",
            "2025/01/01",
            "",
            "2025-01-011",
        ] {
            assert!(check_day(bad).is_err(), "{bad}");
        }
    }
}
