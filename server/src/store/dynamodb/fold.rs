//! Usage rows folded into the daily totals, and reads of a partition's days
//! that stay exact while they are.
//!
//! A conclusion whose daily totals do not fit its commit writes them as
//! usage rows (`day#<day>#<batch>`, tagged with the attempt), which count
//! once the batch is done with that attempt. Left as rows, every read of a
//! day would read every batch's row. So each row of a winning attempt is
//! folded into its day's total, in one transaction per row: the total
//! `ADD`s the bytes, the row is deleted (on condition it is still that
//! attempt's: a second folder changes nothing), and the partition's fold
//! counter (`#fold`) goes up. The concluding replica folds its rows right
//! after the commit; a read that meets rows of a winning attempt (left by a
//! replica that stopped before folding) folds them too.
//!
//! A query reads a partition's items one after another, not as one
//! snapshot: a fold landing between the total and its row would be missed.
//! So a read takes the fold counter before and after its query, and reads
//! again when it moved.

use aws_sdk_dynamodb::types::{Delete, TransactWriteItem};
use cid::Cid;

use super::items::{get_u64, s, usage_row_sk};
use super::requests::{Add, Tx};
use super::table::build_error;
use super::DynamoStore;
use crate::store::StoreError;

/// The sort key of a partition's fold counter (sorts before `day#`).
pub(super) const FOLD_SK: &str = "#fold";

/// Reads of a partition tried while folds keep landing.
const READ_TRIES: usize = 8;

/// A usage row of a winning attempt, to fold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Row {
    pub(super) pk: String,
    pub(super) day: String,
    pub(super) batch: Cid,
    pub(super) attempt: String,
    pub(super) bytes: u64,
}

impl DynamoStore {
    /// Folds `rows` (of winning attempts) into their days' totals, as many
    /// as a transaction holds at a time (each partition's counter once per
    /// transaction); when one was folded by someone else meanwhile, that
    /// transaction's rows are folded one at a time, skipping it.
    pub(super) fn fold(&self, rows: &[Row]) -> Result<(), StoreError> {
        let mut rows: Vec<&Row> = rows.iter().collect();
        rows.sort_by(|a, b| (&a.pk, &a.day).cmp(&(&b.pk, &b.day)));
        let mut chunk: Vec<&Row> = Vec::new();
        let mut items = 0;
        for row in rows {
            let new_partition = chunk.last().is_none_or(|last| last.pk != row.pk);
            let needs = 2 + usize::from(new_partition);
            if items + needs > super::requests::TX_MAX {
                self.fold_chunk(&chunk)?;
                chunk.clear();
                items = 0;
            }
            items += 2 + usize::from(chunk.last().is_none_or(|last| last.pk != row.pk));
            chunk.push(row);
        }
        self.fold_chunk(&chunk)
    }

    /// One transaction folding `rows` (sorted by partition).
    fn fold_chunk(&self, rows: &[&Row]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut items = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            if i == 0 || rows[i - 1].pk != row.pk {
                items.push(self.add(&Add {
                    pk: row.pk.clone(),
                    sk: FOLD_SK.to_string(),
                    deltas: vec![("v".to_string(), 1)],
                    condition: None,
                    version: None,
                })?);
            }
            items.push(self.add(&Add {
                pk: row.pk.clone(),
                sk: format!("day#{}", row.day),
                deltas: vec![("bytes".to_string(), row.bytes)],
                condition: None,
                version: None,
            })?);
            let delete = Delete::builder()
                .table_name(&self.table)
                .key("pk", s(&row.pk))
                .key("sk", s(&usage_row_sk(&row.day, &row.batch)))
                .condition_expression("#at = :at")
                .expression_attribute_names("#at", "attempt")
                .expression_attribute_values(":at", s(&row.attempt))
                .build()
                .map_err(build_error)?;
            items.push(TransactWriteItem::builder().delete(delete).build());
        }
        match self.transact(items)? {
            Tx::Done => Ok(()),
            Tx::Cancelled(_) if rows.len() > 1 => {
                // A row folded meanwhile (or a total that would overflow):
                // one at a time tells which.
                rows.iter().try_for_each(|row| self.fold_chunk(&[row]))
            }
            Tx::Cancelled(reasons) if reasons.get(2).is_some_and(|r| r != "None") => {
                // Folded by someone else meanwhile.
                Ok(())
            }
            Tx::Cancelled(_) => Err(StoreError::Corrupt(format!(
                "the daily total {} {} overflows u64",
                rows[0].pk, rows[0].day
            ))),
        }
    }

    /// The fold counter of partition `pk` (0 before any fold).
    fn fold_counter(&self, pk: &str) -> Result<u64, StoreError> {
        match self.get((pk, FOLD_SK))? {
            Some(item) => get_u64(&item, "v"),
            None => Ok(0),
        }
    }

    /// `read` (a query of partition `pk`) when no fold of `pk` landed
    /// while it ran: the fold counter is the same before and after.
    pub(super) fn without_folds<T>(
        &self,
        pk: &str,
        mut read: impl FnMut() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        for _ in 0..READ_TRIES {
            let before = self.fold_counter(pk)?;
            let out = read()?;
            if self.fold_counter(pk)? == before {
                return Ok(out);
            }
        }
        Err(StoreError::Contended {
            attempts: READ_TRIES as u32,
        })
    }
}
