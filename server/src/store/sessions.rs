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
}

/// Sessions a store keeps at most, where it can count them (redb); the
/// soonest to expire go first.
pub const MAX_SESSIONS: usize = 10_000;

/// Dashboard logins.
pub trait Sessions {
    /// Keeps dashboard session `id` (the SHA-256 of its cookie), dropping
    /// expired ones (and, past [`MAX_SESSIONS`], the soonest to expire).
    fn put_session(&self, id: &[u8; 32], session: &StoredSession) -> Result<(), StoreError>;

    /// Session `id` unless it expired by `now` (unix seconds).
    fn session(&self, id: &[u8; 32], now: u64) -> Result<Option<StoredSession>, StoreError>;

    /// Ends session `id` (nothing when there is none).
    fn remove_session(&self, id: &[u8; 32]) -> Result<(), StoreError>;
}
