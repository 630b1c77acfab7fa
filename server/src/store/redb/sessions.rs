//! [`Sessions`] on redb: table `sessions`.

use std::collections::BTreeMap;

use ::redb::{ReadableDatabase, ReadableTable};
use ucanto::dag::{decode_cbor, encode_cbor, Ipld};

use super::{OrBackend, RedbStore, META, SESSIONS};

/// The key in `meta` of the time before which sessions are over.
const SESSIONS_SINCE: &str = "sessions_since";
use crate::store::{Sessions, StoreError, StoredSession};

impl Sessions for RedbStore {
    fn put_session(&self, id: &[u8; 32], session: &StoredSession) -> Result<(), StoreError> {
        let tx = self.db.begin_write().or_backend()?;
        {
            let mut sessions = tx.open_table(SESSIONS).or_backend()?;
            // Few (operators' logins): the whole table is read to drop the
            // expired ones, and the soonest to expire past the cap.
            let mut kept = Vec::new();
            for entry in sessions.iter().or_backend()? {
                let (key, value) = entry.or_backend()?;
                let expires_at = decode_session(value.value())?.expires_at;
                kept.push((expires_at, key.value().to_vec()));
            }
            kept.sort();
            let now = ucanto::ucan::now();
            let full = kept.len().saturating_sub(crate::store::MAX_SESSIONS - 1);
            for (i, (expires_at, key)) in kept.iter().enumerate() {
                if *expires_at <= now || i < full {
                    sessions.remove(key.as_slice()).or_backend()?;
                }
            }
            let value = encode_cbor(&Ipld::Map(BTreeMap::from([
                ("user".to_string(), Ipld::String(session.user.clone())),
                ("csrf".to_string(), Ipld::String(session.csrf.clone())),
                (
                    "expires_at".to_string(),
                    Ipld::Integer(session.expires_at.into()),
                ),
                (
                    "started_at".to_string(),
                    Ipld::Integer(session.started_at.into()),
                ),
                (
                    "credentials".to_string(),
                    Ipld::String(session.credentials.clone()),
                ),
            ])))
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
            sessions
                .insert(id.as_slice(), value.as_slice())
                .or_backend()?;
        }
        tx.commit().or_backend()
    }

    fn session(&self, id: &[u8; 32], now: u64) -> Result<Option<StoredSession>, StoreError> {
        let tx = self.db.begin_read().or_backend()?;
        let sessions = tx.open_table(SESSIONS).or_backend()?;
        let Some(value) = sessions.get(id.as_slice()).or_backend()? else {
            return Ok(None);
        };
        let since = tx
            .open_table(META)
            .or_backend()?
            .get(SESSIONS_SINCE)
            .or_backend()?
            .map_or(0, |v| v.value());
        Ok(Some(decode_session(value.value())?)
            .filter(|s| s.expires_at > now && s.started_at >= since))
    }

    fn end_sessions(&self, before: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write().or_backend()?;
        {
            let mut meta = tx.open_table(META).or_backend()?;
            let since = meta
                .get(SESSIONS_SINCE)
                .or_backend()?
                .map_or(0, |v| v.value());
            meta.insert(SESSIONS_SINCE, since.max(before))
                .or_backend()?;
            tx.open_table(SESSIONS)
                .or_backend()?
                .retain(|_, value| decode_session(value).is_ok_and(|s| s.started_at >= before))
                .or_backend()?;
        }
        tx.commit().or_backend()
    }

    fn remove_session(&self, id: &[u8; 32]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().or_backend()?;
        tx.open_table(SESSIONS)
            .or_backend()?
            .remove(id.as_slice())
            .or_backend()?;
        tx.commit().or_backend()
    }
}

/// A dashboard session from its stored form.
fn decode_session(bytes: &[u8]) -> Result<StoredSession, StoreError> {
    let corrupt = |why: &str| StoreError::Corrupt(format!("session: {why}"));
    let Ipld::Map(map) = decode_cbor(bytes).map_err(|e| corrupt(&e.to_string()))? else {
        return Err(corrupt("not a map"));
    };
    let text = |key: &str| match map.get(key) {
        Some(Ipld::String(s)) => Ok(s.clone()),
        _ => Err(corrupt(&format!("no {key}"))),
    };
    let expires_at = match map.get("expires_at") {
        Some(Ipld::Integer(n)) => u64::try_from(*n).map_err(|_| corrupt("bad expires_at"))?,
        _ => return Err(corrupt("no expires_at")),
    };
    let started_at = match map.get("started_at") {
        Some(Ipld::Integer(n)) => u64::try_from(*n).map_err(|_| corrupt("bad started_at"))?,
        _ => return Err(corrupt("no started_at")),
    };
    Ok(StoredSession {
        user: text("user")?,
        csrf: text("csrf")?,
        expires_at,
        started_at,
        credentials: text("credentials")?,
    })
}
