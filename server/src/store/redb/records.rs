//! [`Records`] on redb: tracking (in groups that share one commit),
//! leases and reschedules, and the stored form of a record.

use std::collections::BTreeMap;

use ::redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use cid::Cid;
use ucanto::dag::{decode_cbor, encode_cbor, Fields, Ipld};
use ucanto::principal::Did;

use super::{
    cid_bytes, decode_cid, int, load, pending, save, OrBackend, RedbStore, DUE, KNOWN_NODES,
    NODE_BATCHES, RECORDS, RECORD_VERSION,
};
use crate::store::{
    lease_end, EgressRecord, Lease, NewRecord, PutOutcome, RecordStatus, Records, Retry, StoreError,
};

impl RedbStore {
    /// Inserts a group of new records in one transaction: each answered as
    /// a lone `put` would be (a batch tracked twice in one group is
    /// `Existing` the second time), all durable at one commit.
    fn put_group(&self, group: Vec<(NewRecord, u64)>) -> Vec<Result<PutOutcome, StoreError>> {
        let count = group.len();
        let written = (|| {
            let tx = self.db.begin_write().or_backend()?;
            let mut results = Vec::with_capacity(count);
            let mut inserted = false;
            {
                let mut records = tx.open_table(RECORDS).or_backend()?;
                let mut due = tx.open_table(DUE).or_backend()?;
                let mut node_batches = tx.open_table(NODE_BATCHES).or_backend()?;
                let mut known_nodes = tx.open_table(KNOWN_NODES).or_backend()?;
                let mut node_pending = tx.open_table(pending::NODE_PENDING).or_backend()?;
                for (new, max_pending) in group {
                    if let Some(existing) = load(&records, &new.batch)? {
                        results.push(PutOutcome::existing(existing, &new.node));
                        continue;
                    }
                    let queued = pending::count(&node_pending, new.node.as_str())?;
                    if queued >= max_pending {
                        results.push(Err(StoreError::TooManyPending { pending: queued }));
                        continue;
                    }
                    pending::added(&mut node_pending, new.node.as_str())?;
                    let record = EgressRecord::from_new(new);
                    save(&mut records, &mut due, None, &record)?;
                    let key = record.batch.to_bytes();
                    node_batches
                        .insert(
                            (record.node.as_str(), record.received_at, key.as_slice()),
                            (),
                        )
                        .or_backend()?;
                    known_nodes.insert(record.node.as_str(), ()).or_backend()?;
                    results.push(Ok(PutOutcome::Inserted(record)));
                    inserted = true;
                }
            }
            // With nothing inserted, dropping the transaction aborts it.
            if inserted {
                tx.commit().or_backend()?;
            }
            Ok::<_, StoreError>(results)
        })();
        written.unwrap_or_else(|e| vec![Err(e); count])
    }
}

impl Records for RedbStore {
    fn put_within(&self, new: NewRecord, max_pending: u64) -> Result<PutOutcome, StoreError> {
        self.puts
            .submit((new, max_pending), |group| self.put_group(group))
            .unwrap_or_else(|| {
                Err(StoreError::backend(
                    "recording a batch",
                    super::super::error::Internal("a group commit failed"),
                ))
            })
    }

    fn node_pending(&self, node: &Did) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let table = tx.open_table(pending::NODE_PENDING).or_backend()?;
        pending::count(&table, node.as_str())
    }

    fn record(&self, batch: &Cid) -> Result<Option<EgressRecord>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let records = tx.open_table(RECORDS).or_backend()?;
        load(&records, batch)
    }

    fn lease_pending(
        &self,
        now: u64,
        owner: &str,
        lease_secs: u64,
        limit: usize,
    ) -> Result<Vec<EgressRecord>, StoreError> {
        let until = lease_end(now, lease_secs)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let tx = self.db.begin_write().or_backend()?;
        let mut leased = Vec::new();
        {
            let mut records = tx.open_table(RECORDS).or_backend()?;
            let mut due = tx.open_table(DUE).or_backend()?;
            let mut picked = Vec::new();
            for entry in due.iter().or_backend()? {
                let (key, _) = entry.or_backend()?;
                let (due_at, _, batch) = key.value();
                if due_at > now || picked.len() == limit {
                    break;
                }
                picked.push((due_at, decode_cid(batch)?));
            }
            for (due_at, batch) in picked {
                let old = load(&records, &batch)?.ok_or_else(|| {
                    StoreError::Corrupt(format!("due index names missing record {batch}"))
                })?;
                if old.due_at() != Some(due_at) {
                    return Err(StoreError::Corrupt(format!(
                        "due index of {batch} is stale"
                    )));
                }
                let record = old.leased(owner, until);
                save(&mut records, &mut due, Some(&old), &record)?;
                leased.push(record);
            }
        }
        if !leased.is_empty() {
            tx.commit().or_backend()?;
        }
        Ok(leased)
    }

    fn pending_records(&self, limit: usize) -> Result<Vec<EgressRecord>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let records = tx.open_table(RECORDS).or_backend()?;
        let due = tx.open_table(DUE).or_backend()?;
        let mut pending = Vec::new();
        for entry in due.iter().or_backend()?.take(limit) {
            let (key, _) = entry.or_backend()?;
            let batch = decode_cid(key.value().2)?;
            let record = load(&records, &batch)?.ok_or_else(|| {
                StoreError::Corrupt(format!("due index names missing record {batch}"))
            })?;
            pending.push(record);
        }
        Ok(pending)
    }

    fn release_leases(&self, owner: &str, _now: u64, _lease_secs: u64) -> Result<u64, StoreError> {
        let tx = self.db.begin_write().or_backend()?;
        let mut released = 0;
        {
            let mut records = tx.open_table(RECORDS).or_backend()?;
            let mut due = tx.open_table(DUE).or_backend()?;
            // Leased records are in the due index, at their lease's end.
            let mut mine = Vec::new();
            for entry in due.iter().or_backend()? {
                let (key, _) = entry.or_backend()?;
                let batch = decode_cid(key.value().2)?;
                let record = load(&records, &batch)?.ok_or_else(|| {
                    StoreError::Corrupt(format!("due index names missing record {batch}"))
                })?;
                if record.leased_by(owner) {
                    mine.push(record);
                }
            }
            for old in mine {
                save(&mut records, &mut due, Some(&old), &old.released())?;
                released += 1;
            }
        }
        tx.commit().or_backend()?;
        Ok(released)
    }

    fn reschedule(
        &self,
        batch: &Cid,
        owner: &str,
        now: u64,
        retry: &Retry,
    ) -> Result<EgressRecord, StoreError> {
        let tx = self.db.begin_write().or_backend()?;
        let record = {
            let mut records = tx.open_table(RECORDS).or_backend()?;
            let mut due = tx.open_table(DUE).or_backend()?;
            let old = load(&records, batch)?.ok_or(StoreError::NotFound)?;
            let record = old.rescheduled(owner, now, retry)?;
            save(&mut records, &mut due, Some(&old), &record)?;
            record
        };
        tx.commit().or_backend()?;
        Ok(record)
    }

    fn pending_count(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let due = tx.open_table(DUE).or_backend()?;
        due.len().or_backend()
    }
}

/// Encodes a record as format-1 dag-cbor (see the module docs).
pub(super) fn encode_record(r: &EgressRecord) -> Result<Vec<u8>, StoreError> {
    let mut map = BTreeMap::new();
    map.insert("v".to_string(), int(RECORD_VERSION));
    map.insert("batch".to_string(), cid_bytes(&r.batch));
    map.insert("node".to_string(), Ipld::String(r.node.as_str().into()));
    map.insert("endpoint".to_string(), Ipld::String(r.endpoint.clone()));
    map.insert("track".to_string(), cid_bytes(&r.track_invocation));
    map.insert(
        "trackBytes".to_string(),
        Ipld::Bytes(r.track_invocation_bytes.clone()),
    );
    map.insert(
        "consolidate".to_string(),
        cid_bytes(&r.consolidate_invocation),
    );
    map.insert("receivedAt".to_string(), int(r.received_at));
    map.insert("attempts".to_string(), int(r.attempts.into()));
    map.insert("nextAttemptAt".to_string(), int(r.next_attempt_at));
    if let Some(t) = r.first_failure_at {
        map.insert("firstFailureAt".to_string(), int(t));
    }
    if let Some(e) = &r.last_error {
        map.insert("lastError".to_string(), Ipld::String(e.clone()));
    }
    if let Some(lease) = &r.lease {
        let lease = BTreeMap::from([
            ("owner".to_string(), Ipld::String(lease.owner.clone())),
            ("until".to_string(), int(lease.until)),
        ]);
        map.insert("lease".to_string(), Ipld::Map(lease));
    }
    if let RecordStatus::Done {
        receipt,
        concluded_at,
        total_bytes,
        counted_receipts,
        failure,
    } = &r.status
    {
        let mut done = BTreeMap::from([
            ("receipt".to_string(), cid_bytes(receipt)),
            ("concludedAt".to_string(), int(*concluded_at)),
            ("totalBytes".to_string(), int(*total_bytes)),
            ("countedReceipts".to_string(), int(*counted_receipts)),
        ]);
        if let Some(failure) = failure {
            done.insert("failure".to_string(), Ipld::String(failure.clone()));
        }
        map.insert("done".to_string(), Ipld::Map(done));
    }
    encode_cbor(&Ipld::Map(map)).map_err(|e| StoreError::Corrupt(format!("encode record: {e}")))
}

/// Fields a stored record may have: any other is from a newer format.
const RECORD_FIELDS: [&str; 14] = [
    "v",
    "batch",
    "node",
    "endpoint",
    "track",
    "trackBytes",
    "consolidate",
    "receivedAt",
    "attempts",
    "nextAttemptAt",
    "firstFailureAt",
    "lastError",
    "lease",
    "done",
];

/// Decodes a record stored under `key`, refusing anything but this format.
pub(super) fn decode_record(key: &[u8], bytes: &[u8]) -> Result<EgressRecord, StoreError> {
    let value = decode_cbor(bytes).map_err(|e| StoreError::Corrupt(format!("record: {e}")))?;
    let f = Fields::of("record", &value)?.only(&RECORD_FIELDS)?;
    let version = f.uint("v")?;
    if version != RECORD_VERSION {
        return Err(StoreError::Corrupt(format!(
            "record version {version} is not supported"
        )));
    }
    let batch = decode_cid(f.bytes("batch")?)?;
    if batch.to_bytes() != key {
        return Err(StoreError::Corrupt(format!(
            "record of {batch} stored under another key"
        )));
    }
    let node = Did::parse(f.string("node")?)
        .map_err(|e| StoreError::Corrupt(format!("record node: {e}")))?;
    let lease = match f.get("lease") {
        None => None,
        Some(_) => {
            let l = f.fields("lease")?.only(&["owner", "until"])?;
            Some(Lease {
                owner: l.string("owner")?.to_string(),
                until: l.uint("until")?,
            })
        }
    };
    let status = match f.get("done") {
        None => RecordStatus::Pending,
        Some(_) => {
            let d = f.fields("done")?.only(&[
                "receipt",
                "concludedAt",
                "totalBytes",
                "countedReceipts",
                "failure",
            ])?;
            RecordStatus::Done {
                receipt: decode_cid(d.bytes("receipt")?)?,
                concluded_at: d.uint("concludedAt")?,
                total_bytes: d.uint("totalBytes")?,
                counted_receipts: d.uint("countedReceipts")?,
                failure: d.opt_string("failure")?.map(str::to_string),
            }
        }
    };
    Ok(EgressRecord {
        batch,
        node,
        endpoint: f.string("endpoint")?.to_string(),
        track_invocation: decode_cid(f.bytes("track")?)?,
        track_invocation_bytes: f.bytes("trackBytes")?.to_vec(),
        consolidate_invocation: decode_cid(f.bytes("consolidate")?)?,
        received_at: f.uint("receivedAt")?,
        status,
        attempts: u32::try_from(f.uint("attempts")?)
            .map_err(|_| StoreError::Corrupt("record attempts overflow u32".into()))?,
        next_attempt_at: f.uint("nextAttemptAt")?,
        first_failure_at: f.opt_uint("firstFailureAt", false)?,
        last_error: f.opt_string("lastError")?.map(str::to_string),
        lease,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ucanto::dag::{cid_of, CAR, DAG_CBOR};

    fn record() -> EgressRecord {
        let mut r = EgressRecord::from_new(NewRecord {
            batch: cid_of(CAR, b"batch"),
            node: Did::parse("did:web:node.example").unwrap(),
            endpoint: "https://node.example/receipts/{cid}".into(),
            track_invocation: cid_of(DAG_CBOR, b"track"),
            track_invocation_bytes: b"car".to_vec(),
            consolidate_invocation: cid_of(DAG_CBOR, b"consolidate"),
            received_at: 100,
        });
        r.attempts = 2;
        r.first_failure_at = Some(150);
        r.last_error = Some("fetch failed".into());
        r.lease = Some(Lease {
            owner: "replica-1".into(),
            until: 200,
        });
        r
    }

    /// Every field survives a round trip, pending or done.
    #[test]
    fn record_round_trips() {
        let mut r = record();
        let key = r.batch.to_bytes();
        assert_eq!(decode_record(&key, &encode_record(&r).unwrap()).unwrap(), r);
        r.status = RecordStatus::Done {
            receipt: cid_of(DAG_CBOR, b"receipt"),
            concluded_at: 300,
            total_bytes: 42,
            counted_receipts: 3,
            failure: None,
        };
        r.lease = None;
        assert_eq!(decode_record(&key, &encode_record(&r).unwrap()).unwrap(), r);
        r.status = RecordStatus::Done {
            receipt: cid_of(DAG_CBOR, b"receipt"),
            concluded_at: 301,
            total_bytes: 0,
            counted_receipts: 0,
            failure: Some("the batch is not a CAR".into()),
        };
        assert_eq!(decode_record(&key, &encode_record(&r).unwrap()).unwrap(), r);
    }

    /// A record from a newer format, with an unknown field, or under another
    /// key is refused rather than misread.
    #[test]
    fn record_decoding_is_strict() {
        let r = record();
        let key = r.batch.to_bytes();
        let Ipld::Map(map) = decode_cbor(&encode_record(&r).unwrap()).unwrap() else {
            unreachable!()
        };
        let with = |k: &str, v: Ipld| {
            let mut m = map.clone();
            m.insert(k.into(), v);
            encode_cbor(&Ipld::Map(m)).unwrap()
        };
        assert!(decode_record(&key, &with("v", int(2))).is_err());
        assert!(decode_record(&key, &with("extra", int(1))).is_err());
        assert!(decode_record(b"other", &encode_record(&r).unwrap()).is_err());
        let mut missing = map.clone();
        missing.remove("endpoint");
        let missing = encode_cbor(&Ipld::Map(missing)).unwrap();
        assert!(decode_record(&key, &missing).is_err());
    }
}
