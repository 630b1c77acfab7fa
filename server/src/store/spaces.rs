//! The space registry: which spaces are billable, their provider and their
//! customer.
//!
//! Implemented by `redb/spaces.rs` and `dynamodb/spaces.rs`.

use ucanto::principal::Did;

use super::StoreError;

/// A space in the tracker's own registry: who provisions it (its provider)
/// and who pays for it (its customer), when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaceEntry {
    /// The space.
    pub space: Did,
    /// The provider that provisions it.
    pub provider: Did,
    /// The account it belongs to, if known.
    pub customer: Option<Did>,
}

/// The tracker's own registry of billable spaces.
pub trait SpaceStore {
    /// Adds or replaces `entry` in the registry of billable spaces.
    fn put_space(&self, entry: &SpaceEntry) -> Result<(), StoreError>;

    /// Adds or replaces each of `entries`: one transaction where the backend
    /// has them (redb), so that registering many spaces costs one commit.
    fn put_spaces(&self, entries: &[SpaceEntry]) -> Result<(), StoreError> {
        entries.iter().try_for_each(|entry| self.put_space(entry))
    }

    /// Removes `space` from the registry; false when it was not there.
    fn remove_space(&self, space: &Did) -> Result<bool, StoreError>;

    /// The registry's entry for `space`.
    fn space(&self, space: &Did) -> Result<Option<SpaceEntry>, StoreError>;

    /// Every registered space, in DID order.
    fn spaces(&self) -> Result<Vec<SpaceEntry>, StoreError>;

    /// The registered spaces whose customer is `account`, in DID order
    /// (read from an index: the cost grows with the account's spaces, not
    /// the registry's).
    fn customer_spaces(&self, account: &Did) -> Result<Vec<Did>, StoreError>;
}
