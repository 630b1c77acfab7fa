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
                .item("started_at", n(session.started_at))
                .item("credentials", s(&session.credentials))
                .item("ttl", n(session.expires_at))
                .send(),
        )
        .map_err(backend)?;
        Ok(())
    }

    /// [`Sessions::session`](crate::store::Sessions::session).
    fn session(&self, id: &[u8; 32], now: u64) -> Result<Option<StoredSession>, StoreError> {
        // The session and the time before which sessions are over, in one
        // request.
        let keys = [
            (session_pk(id), "session".to_string()),
            ("meta".to_string(), "sessions".to_string()),
        ];
        let mut found = self.get_many(&keys)?;
        let Some(item) = found.remove(&keys[0]) else {
            return Ok(None);
        };
        let since = match found.remove(&keys[1]) {
            Some(meta) => get_u64(&meta, "since")?,
            None => 0,
        };
        let session = StoredSession {
            user: get_s(&item, "user")?,
            csrf: get_s(&item, "csrf")?,
            expires_at: get_u64(&item, "expires_at")?,
            started_at: get_u64(&item, "started_at")?,
            credentials: get_s(&item, "credentials")?,
        };
        Ok(Some(session).filter(|s| s.expires_at > now && s.started_at >= since))
    }

    /// [`Sessions::end_sessions`](crate::store::Sessions::end_sessions): the
    /// time is kept in one item (only ever raised); the sessions themselves
    /// expire by the table's time to live.
    fn end_sessions(&self, before: u64) -> Result<(), StoreError> {
        let raised = self.block_on(
            self.client
                .update_item()
                .table_name(&self.table)
                .key("pk", s("meta"))
                .key("sk", s("sessions"))
                .update_expression("SET #since = :before")
                .condition_expression("attribute_not_exists(#since) OR #since < :before")
                .expression_attribute_names("#since", "since")
                .expression_attribute_values(":before", n(before))
                .send(),
        );
        match raised {
            Ok(_) => Ok(()),
            // Already at or past it.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(backend(e)),
        }
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
