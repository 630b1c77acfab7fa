//! Dashboard sessions, kept in the store so that every replica knows them.
//!
//! Implemented by `redb/sessions.rs` and `dynamodb/sessions.rs`.

use super::StoreError;

/// A dashboard login, kept in the store so that every replica knows it and
/// a logout ends it everywhere. Stored under the SHA-256 of its cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSession {
    /// Who logged in.
    pub user: String,
    /// The token every form of the session must carry.
    pub csrf: String,
    /// When it ends (unix seconds).
    pub expires_at: u64,
    /// When it began (unix seconds): [`Sessions::end_sessions`] ends those
    /// that began before its time.
    pub started_at: u64,
    /// Which credentials it was opened under (a digest of the configured
    /// user, password and token): a session of other ones is over.
    pub credentials: String,
}

/// Sessions a store keeps at most, where it can count them (redb); the
/// soonest to expire go first.
pub const MAX_SESSIONS: usize = 10_000;

/// Dashboard logins.
pub trait Sessions {
    /// Keeps dashboard session `id` (the SHA-256 of its cookie), dropping
    /// expired ones (and, past [`MAX_SESSIONS`], the soonest to expire).
    fn put_session(&self, id: &[u8; 32], session: &StoredSession) -> Result<(), StoreError>;

    /// Session `id` unless it expired by `now` (unix seconds) or began
    /// before the last [`Sessions::end_sessions`].
    fn session(&self, id: &[u8; 32], now: u64) -> Result<Option<StoredSession>, StoreError>;

    /// Ends every session that began before `before` (unix seconds), on
    /// every replica: "log out everywhere".
    fn end_sessions(&self, before: u64) -> Result<(), StoreError>;

    /// Ends session `id` (nothing when there is none).
    fn remove_session(&self, id: &[u8; 32]) -> Result<(), StoreError>;
}
