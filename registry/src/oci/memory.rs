//! What the OCI API keeps in memory between requests: a map that holds at
//! most a fixed number of entries and starts over when full (everything in
//! it can be derived again, so forgetting costs only time).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use crate::error::{Error, Result};

/// The entries one memory holds before starting over.
const REMEMBERED: usize = 4096;

pub(super) struct Memory<K, V>(Mutex<HashMap<K, V>>);

impl<K, V> Default for Memory<K, V> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<K: Eq + Hash, V: Clone> Memory<K, V> {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<K, V>>> {
        self.0
            .lock()
            .map_err(|_| Error::internal("an OCI memory is poisoned"))
    }

    pub(super) fn get(&self, key: &K) -> Result<Option<V>> {
        Ok(self.lock()?.get(key).cloned())
    }

    pub(super) fn contains(&self, key: &K) -> Result<bool> {
        Ok(self.lock()?.contains_key(key))
    }

    /// Keeps `value` under `key`; whether `key` was there already.
    pub(super) fn insert(&self, key: K, value: V) -> Result<bool> {
        let mut map = self.lock()?;
        if map.len() >= REMEMBERED && !map.contains_key(&key) {
            map.clear();
        }
        Ok(map.insert(key, value).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_memory_starts_over_and_a_known_key_is_replaced_in_place() {
        let m = Memory::default();
        for i in 0..REMEMBERED {
            assert!(!m.insert(i, i).unwrap());
        }
        assert!(m.insert(0, 7).unwrap(), "a known key does not clear");
        assert_eq!(m.get(&1).unwrap(), Some(1));
        assert!(!m.insert(REMEMBERED, 0).unwrap());
        assert_eq!(m.get(&1).unwrap(), None, "full: started over");
        assert!(m.contains(&REMEMBERED).unwrap());
    }
}
