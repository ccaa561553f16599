//! An in-memory engine for unit tests: the same contract, no durability.

use super::{Engine, EngineError, EngineResult, Entry, KeyRange, Mutation, Snapshot, WriteBatch};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

type Map = BTreeMap<Bytes, Bytes>;

/// Copy-on-write map: a snapshot is a shared reference to an immutable version.
#[derive(Default, Clone)]
pub struct MemoryEngine {
    current: Arc<Mutex<Arc<Map>>>,
}

impl MemoryEngine {
    pub fn new() -> Self {
        Self::default()
    }

    fn load(&self) -> Arc<Map> {
        match self.current.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// An immutable version of the map.
pub struct MemorySnapshot(Arc<Map>);

pub(crate) fn scan_map(map: &Map, range: &KeyRange, limit: usize, reverse: bool) -> Vec<Entry> {
    let upper = match &range.end {
        Some(end) => Bound::Excluded(end.clone()),
        None => Bound::Unbounded,
    };
    if range.end.as_ref().is_some_and(|end| *end <= range.start) {
        return Vec::new();
    }
    let iter = map.range((Bound::Included(range.start.clone()), upper));
    let clone = |(k, v): (&Bytes, &Bytes)| (k.clone(), v.clone());
    if reverse {
        iter.rev().take(limit).map(clone).collect()
    } else {
        iter.take(limit).map(clone).collect()
    }
}

impl Snapshot for MemorySnapshot {
    async fn get(&self, key: &[u8]) -> EngineResult<Option<Bytes>> {
        Ok(self.0.get(key).cloned())
    }

    async fn scan(
        &self,
        range: &KeyRange,
        limit: usize,
        reverse: bool,
    ) -> EngineResult<Vec<Entry>> {
        Ok(scan_map(&self.0, range, limit, reverse))
    }
}

impl Engine for MemoryEngine {
    type Snapshot = MemorySnapshot;

    async fn snapshot(&self) -> EngineResult<MemorySnapshot> {
        Ok(MemorySnapshot(self.load()))
    }

    async fn write(&self, batch: WriteBatch) -> EngineResult<()> {
        let mut guard = self
            .current
            .lock()
            .map_err(|_| EngineError::Storage("memory engine lock poisoned".into()))?;
        for condition in &batch.conditions {
            if guard.get(&condition.key) != condition.expected.as_ref() {
                return Err(EngineError::ConditionFailed {
                    key: condition.key.clone(),
                });
            }
        }
        let map = Arc::make_mut(&mut guard);
        for mutation in batch.mutations {
            match mutation {
                Mutation::Put { key, value } => {
                    map.insert(key, value);
                }
                Mutation::Delete { key } => {
                    map.remove(&key);
                }
            }
        }
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        self.load()
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }
}
