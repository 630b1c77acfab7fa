//! When batches are closed, and how hard appends are made durable.

use std::time::Duration;

use super::JournalError;

/// The smallest batch the spec allows: 10 MiB.
pub const MIN_BATCH_BYTES: u64 = 10 * 1024 * 1024;
/// The largest batch the spec allows: 1 GiB.
pub const MAX_BATCH_BYTES: u64 = 1024 * 1024 * 1024;
/// Default size at which a batch is closed: 100 MiB, as Piri.
pub const DEFAULT_BATCH_BYTES: u64 = 100 * 1024 * 1024;
/// Default age at which a batch is closed: 12 hours, as Piri.
pub const DEFAULT_BATCH_AGE: Duration = Duration::from_secs(12 * 3600);
/// Largest receipt archive accepted: 8 MiB, the default block limit of CAR
/// readers (go-car, [`ucanto::car::Limits`]), so any reader can read the batch.
pub const MAX_ARCHIVE_BYTES: u64 = 8 * 1024 * 1024;

/// When batches are closed, and how hard appends are made durable.
///
/// ```
/// use std::time::Duration;
/// use etracker_client::JournalConfig;
///
/// // Piri's defaults: close at 100 MiB or after 12 h, never below 10 MiB.
/// let production = JournalConfig::default();
/// // Tests and demos: tiny batches, explicitly allowed.
/// let demo = JournalConfig::default()
///     .allow_small_batches(true)
///     .min_batch_bytes(0)
///     .max_batch_bytes(64 * 1024)
///     .max_batch_age(Duration::from_secs(60));
/// # let _ = (production, demo);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalConfig {
    pub(super) max_batch_bytes: u64,
    pub(super) max_batch_age: Duration,
    pub(super) min_batch_bytes: u64,
    pub(super) allow_small_batches: bool,
    pub(super) sync_appends: bool,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            max_batch_bytes: DEFAULT_BATCH_BYTES,
            max_batch_age: DEFAULT_BATCH_AGE,
            min_batch_bytes: MIN_BATCH_BYTES,
            allow_small_batches: false,
            sync_appends: true,
        }
    }
}

impl JournalConfig {
    /// Close a batch before an append would make it larger than `bytes`
    /// (default 100 MiB; at most 1 GiB).
    pub fn max_batch_bytes(mut self, bytes: u64) -> Self {
        self.max_batch_bytes = bytes;
        self
    }

    /// Close a batch once its first receipt is this old (default 12 h).
    pub fn max_batch_age(mut self, age: Duration) -> Self {
        self.max_batch_age = age;
        self
    }

    /// Never close a batch smaller than `bytes` (default 10 MiB, the spec's
    /// minimum; lower values need [`allow_small_batches`](Self::allow_small_batches)).
    pub fn min_batch_bytes(mut self, bytes: u64) -> Self {
        self.min_batch_bytes = bytes;
        self
    }

    /// Allow batch sizes below the spec's 10 MiB minimum (for tests and
    /// demos; a spec-following tracker may refuse such batches).
    pub fn allow_small_batches(mut self, allow: bool) -> Self {
        self.allow_small_batches = allow;
        self
    }

    /// Whether every append is flushed to disk before it returns (default
    /// true). Without it a power loss may lose more than the last receipt.
    pub fn sync_appends(mut self, sync: bool) -> Self {
        self.sync_appends = sync;
        self
    }

    pub(super) fn validate(&self) -> Result<(), JournalError> {
        let bad = |why: String| Err(JournalError::Config(why));
        if self.max_batch_bytes > MAX_BATCH_BYTES {
            return bad(format!(
                "max_batch_bytes {} is above the spec's 1 GiB",
                self.max_batch_bytes
            ));
        }
        if self.min_batch_bytes > self.max_batch_bytes {
            return bad(format!(
                "min_batch_bytes {} is above max_batch_bytes {}",
                self.min_batch_bytes, self.max_batch_bytes
            ));
        }
        if !self.allow_small_batches
            && (self.min_batch_bytes < MIN_BATCH_BYTES || self.max_batch_bytes < MIN_BATCH_BYTES)
        {
            return bad(format!(
                "batches below the spec's minimum of {MIN_BATCH_BYTES} bytes need allow_small_batches(true)"
            ));
        }
        if self.max_batch_age.is_zero() {
            return bad("max_batch_age must be positive".into());
        }
        Ok(())
    }
}
