//! What a consolidator without the store learns from the tracker's
//! refusals, kept per batch and bounded.
//!
//! A refused conclusion names the retrievals another batch counted
//! meanwhile (marks over the tally) or the spaces the tracker does not
//! bill; the batch's next run drops them. Retrievals are remembered for
//! the batch that was refused only (a retrieval one batch may not count is
//! no reason to refuse it in another, whose own conclusion the tracker
//! judges anyway), and both lists have a fixed ceiling: past it the oldest
//! batches are forgotten, which costs them one more refused conclusion,
//! never a wrong count.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use cid::Cid;
use ucanto::memo::FastMap;
use ucanto::principal::Did;

/// Most retrievals remembered over all batches: 16 MiB of digests.
pub(super) const MAX_LEARNED_RETRIEVALS: usize = 1 << 19;
/// Most unbilled spaces remembered.
pub(super) const MAX_LEARNED_SPACES: usize = 10_000;

/// A retrieval's payload id digest (sha2-256).
pub(super) type Digest = [u8; 32];

/// Retrievals counted elsewhere, by batch, and spaces not billed.
#[derive(Default)]
pub(super) struct Learned {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Sorted digests, by batch.
    counted: FastMap<Cid, Vec<Digest>>,
    /// Batches in the order they were first learned about.
    order: VecDeque<Cid>,
    total: usize,
    unbilled: HashSet<Did>,
}

impl Learned {
    /// Remembers that `batch` may not count `digests`.
    pub(super) fn add_counted(&self, batch: Cid, digests: impl IntoIterator<Item = Digest>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let inner = &mut *inner;
        let known = inner.counted.entry(batch).or_insert_with(|| {
            inner.order.push_back(batch);
            Vec::new()
        });
        let before = known.len();
        known.extend(digests);
        known.sort_unstable();
        known.dedup();
        known.truncate(MAX_LEARNED_RETRIEVALS);
        inner.total = inner.total + known.len() - before;
        // Forget the oldest other batches first, then this one's tail.
        while inner.total > MAX_LEARNED_RETRIEVALS {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if oldest == batch {
                inner.order.push_back(oldest);
                if inner.order.len() == 1 {
                    break;
                }
                continue;
            }
            if let Some(dropped) = inner.counted.remove(&oldest) {
                inner.total -= dropped.len();
            }
        }
    }

    /// The retrievals `batch` may not count, sorted.
    pub(super) fn counted(&self, batch: &Cid) -> Vec<Digest> {
        self.inner
            .lock()
            .ok()
            .and_then(|inner| inner.counted.get(batch).cloned())
            .unwrap_or_default()
    }

    /// Forgets `batch` (concluded).
    pub(super) fn forget(&self, batch: &Cid) {
        if let Ok(mut inner) = self.inner.lock() {
            if let Some(dropped) = inner.counted.remove(batch) {
                inner.total -= dropped.len();
                inner.order.retain(|b| b != batch);
            }
        }
    }

    /// Remembers spaces the tracker does not bill (starting over past the
    /// ceiling).
    pub(super) fn add_unbilled(&self, spaces: impl IntoIterator<Item = Did>) {
        if let Ok(mut inner) = self.inner.lock() {
            for space in spaces {
                if inner.unbilled.len() >= MAX_LEARNED_SPACES {
                    inner.unbilled.clear();
                }
                inner.unbilled.insert(space);
            }
        }
    }

    /// The spaces the tracker said it does not bill.
    pub(super) fn unbilled(&self) -> HashSet<Did> {
        self.inner
            .lock()
            .map(|inner| inner.unbilled.clone())
            .unwrap_or_default()
    }

    /// Retrievals remembered over all batches.
    #[cfg(test)]
    fn total(&self) -> usize {
        self.inner.lock().map(|inner| inner.total).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ucanto::dag::{cid_of, CAR};

    /// Per batch, deduplicated, sorted, and never more than the ceiling:
    /// the oldest batches go first.
    #[test]
    fn learned_retrievals_are_per_batch_and_bounded() {
        let learned = Learned::default();
        let (a, b) = (cid_of(CAR, b"a"), cid_of(CAR, b"b"));
        learned.add_counted(a, [[3; 32], [1; 32], [3; 32]]);
        assert_eq!(learned.counted(&a), vec![[1; 32], [3; 32]]);
        assert!(learned.counted(&b).is_empty(), "another batch is not told");
        let many = (0..MAX_LEARNED_RETRIEVALS as u32).map(|i| {
            let mut d = [0u8; 32];
            d[..4].copy_from_slice(&i.to_be_bytes());
            d[31] = 9;
            d
        });
        learned.add_counted(b, many);
        assert_eq!(learned.total(), MAX_LEARNED_RETRIEVALS);
        assert!(learned.counted(&a).is_empty(), "the oldest was forgotten");
        learned.forget(&b);
        assert_eq!(learned.total(), 0);
        for i in 0..MAX_LEARNED_SPACES + 3 {
            learned.add_unbilled([format!("did:web:s{i}.example").parse().unwrap()]);
        }
        assert!(learned.unbilled().len() <= MAX_LEARNED_SPACES);
    }
}
