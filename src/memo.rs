//! A process-wide memo for work the same inputs ask for again and again
//! (the same did:keys decoded and resolved for request after request): a map
//! of at most a set number of entries, which starts over when full, so that
//! no input, however varied, makes it grow.
//!
//! ```
//! use ucanto::memo::Memo;
//! static SQUARES: Memo<u64, u64> = Memo::new(2);
//! assert_eq!(SQUARES.get_or_insert_with(&3, |n| n * n), 9);
//! assert_eq!(SQUARES.get(&3), Some(9));
//! ```

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::Mutex;

/// A hash map keyed with a per-process random seed (foldhash): several
/// times cheaper than std's SipHash on the short keys hashed for every
/// receipt, and still not predictable from outside.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The set of [`FastMap`].
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// A bounded map that starts over when full.
pub struct Memo<K, V> {
    entries: Mutex<Option<FastMap<K, V>>>,
    capacity: usize,
}

impl<K: Eq + Hash, V: Clone> Memo<K, V> {
    /// An empty memo of at most `capacity` entries.
    pub const fn new(capacity: usize) -> Self {
        Memo {
            entries: Mutex::new(None),
            capacity,
        }
    }

    /// The value remembered for `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.as_ref()?.get(key).cloned()
    }

    /// Remembers `value` for `key`, forgetting everything first when full.
    pub fn insert(&self, key: K, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let map = entries.get_or_insert_with(FastMap::default);
        if map.len() >= self.capacity {
            map.clear();
        }
        map.insert(key, value);
    }

    /// The value remembered for `key`, or `make(key)`, remembered.
    pub fn get_or_insert_with<Q>(&self, key: &Q, make: impl FnOnce(&Q) -> V) -> V
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        match self.get_or_try_insert_with(key, |k| Ok::<V, std::convert::Infallible>(make(k))) {
            Ok(value) => value,
            Err(never) => match never {},
        }
    }

    /// The value remembered for `key`, or `make(key)`, remembered when it is
    /// `Ok` (an error is not remembered).
    pub fn get_or_try_insert_with<Q, E>(
        &self,
        key: &Q,
        make: impl FnOnce(&Q) -> Result<V, E>,
    ) -> Result<V, E>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(value) = self.get(key) {
            return Ok(value);
        }
        let value = make(key)?;
        self.insert(key.to_owned(), value.clone());
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_memo_starts_over() {
        let memo: Memo<String, usize> = Memo::new(2);
        memo.insert("a".into(), 1);
        memo.insert("b".into(), 2);
        assert_eq!((memo.get("a"), memo.get("b")), (Some(1), Some(2)));
        memo.insert("c".into(), 3);
        assert_eq!((memo.get("a"), memo.get("c")), (None, Some(3)));
        assert_eq!(memo.get_or_insert_with("d", |k| k.len()), 1);
        assert_eq!(memo.get("d"), Some(1));
        assert_eq!(
            memo.get_or_try_insert_with("e", |_| Err::<usize, ()>(())),
            Err(())
        );
        assert_eq!(memo.get("e"), None, "an error is not remembered");
    }
}
