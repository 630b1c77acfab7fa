//! Dashboard sessions: one item each, `session#<hex id>`, with a `ttl`
//! attribute (its end, unix seconds) for the table's Time to Live to drop
//! it once expired; reads check the end themselves.

use super::items::{get_s, get_u64, n, s};
use super::table::backend;
use super::DynamoStore;
use crate::store::{Sessions, StoreError, StoredSession};

fn session_pk(id: &[u8; 32]) -> String {
    format!("session#{}", hex::encode(id))
}

impl DynamoStore {}

impl Sessions for DynamoStore {
    /// [`Sessions::put_session`](crate::store::Sessions::put_session).
    fn put_session(&self, id: &[u8; 32], session: &StoredSession) -> Result<(), StoreError> {
        self.block_on(
            self.client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(&session_pk(id)))
                .item("sk", s("session"))
                .item("user", s(&session.user))
                .item("csrf", s(&session.csrf))
                .item("expires_at", n(session.expires_at))
                .item("ttl", n(session.expires_at))
                .send(),
        )
        .map_err(backend)?;
        Ok(())
    }

    /// [`Sessions::session`](crate::store::Sessions::session).
    fn session(&self, id: &[u8; 32], now: u64) -> Result<Option<StoredSession>, StoreError> {
        let Some(item) = self.get((&session_pk(id), "session"))? else {
            return Ok(None);
        };
        let session = StoredSession {
            user: get_s(&item, "user")?,
            csrf: get_s(&item, "csrf")?,
            expires_at: get_u64(&item, "expires_at")?,
        };
        Ok(Some(session).filter(|s| s.expires_at > now))
    }

    /// [`Sessions::remove_session`](crate::store::Sessions::remove_session).
    fn remove_session(&self, id: &[u8; 32]) -> Result<(), StoreError> {
        self.block_on(
            self.client
                .delete_item()
                .table_name(&self.table)
                .key("pk", s(&session_pk(id)))
                .key("sk", s("session"))
                .send(),
        )
        .map_err(backend)?;
        Ok(())
    }
}
