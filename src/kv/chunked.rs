//! An ordered map split into shared chunks, so that a copy of it costs one pointer per chunk.
//!
//! Why: a snapshot needs a frozen copy of the state machine that a background thread can stream to disk
//! while the Raft thread keeps applying entries. A deep copy of a million-key map stops the Raft thread for
//! hundreds of milliseconds (longer than an election timeout on a busy machine) and doubles the memory
//! while it lives. Here a copy clones only the outer index; a chunk is copied the first time it is written
//! while a copy still shares it (copy-on-write through `Arc::make_mut`), so the cost of a snapshot is
//! spread over the writes that follow it and bounded by the chunks they touch.
//!
//! Rules this module keeps:
//! - The chunks partition the key space by range: the outer map's key is a chunk's lower bound, the first
//!   chunk's bound is the empty key (below every key), and every key of a chunk is at least its bound and
//!   below the next chunk's bound. So a lookup is one search in the outer map and one in the chunk, and
//!   iterating the chunks in order yields the keys in order.
//! - A chunk holds at most [`MAX_CHUNK`] keys: one more splits it in two halves. An emptied chunk is
//!   dropped (except the first, whose bound is the empty key). Chunks are never merged; a map that lost
//!   most of its keys keeps some sparse chunks, which costs memory for the outer index only.
//! - How the keys happen to be chunked is not part of the map's value: equality compares the entries.
//! - A chunk is only copied by a write that changes it: looking up, or removing an absent key, never
//!   copies.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

/// Most keys in one chunk; a chunk reaching one more is split in two.
pub const MAX_CHUNK: usize = 1024;

type Chunk<V> = BTreeMap<Vec<u8>, V>;

/// An ordered map from byte-string keys to `V`, cheap to clone (see the module docs).
#[derive(Clone)]
pub struct ChunkedMap<V> {
    chunks: BTreeMap<Vec<u8>, Arc<Chunk<V>>>,
    len: usize,
}

impl<V: Clone> Default for ChunkedMap<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Clone> ChunkedMap<V> {
    /// An empty map (one empty chunk).
    pub fn new() -> Self {
        let mut chunks = BTreeMap::new();
        chunks.insert(Vec::new(), Arc::new(Chunk::new()));
        ChunkedMap { chunks, len: 0 }
    }

    /// Builds the map from entries in strictly increasing key order (the caller checks the order).
    pub fn from_sorted(entries: impl IntoIterator<Item = (Vec<u8>, V)>) -> Self {
        let mut map = ChunkedMap {
            chunks: BTreeMap::new(),
            len: 0,
        };
        let mut current: Vec<(Vec<u8>, V)> = Vec::with_capacity(MAX_CHUNK / 2);
        let flush = |current: &mut Vec<(Vec<u8>, V)>, map: &mut ChunkedMap<V>| {
            let bound = if map.chunks.is_empty() {
                Vec::new()
            } else {
                current[0].0.clone()
            };
            map.len += current.len();
            map.chunks
                .insert(bound, Arc::new(current.drain(..).collect()));
        };
        for entry in entries {
            current.push(entry);
            // Half-full chunks leave room for inserts before the first split.
            if current.len() == MAX_CHUNK / 2 {
                flush(&mut current, &mut map);
            }
        }
        if !current.is_empty() || map.chunks.is_empty() {
            flush(&mut current, &mut map);
        }
        map
    }

    /// Number of keys in the map.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the map holds no keys.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of chunks (for tests and status).
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    fn chunk_of(&self, key: &[u8]) -> (&Vec<u8>, &Arc<Chunk<V>>) {
        self.chunks
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .expect("the first chunk's bound is the empty key, below every key")
    }

    /// The value stored under `key`, if any; never copies a chunk.
    pub fn get(&self, key: &[u8]) -> Option<&V> {
        self.chunk_of(key).1.get(key)
    }

    /// Inserts or replaces; returns the previous value.
    pub fn insert(&mut self, key: Vec<u8>, value: V) -> Option<V> {
        let (bound, chunk) = self
            .chunks
            .range_mut::<[u8], _>((Bound::Unbounded, Bound::Included(key.as_slice())))
            .next_back()
            .expect("the first chunk's bound is the empty key, below every key");
        let chunk = Arc::make_mut(chunk);
        let old = chunk.insert(key, value);
        if old.is_none() {
            self.len += 1;
            if chunk.len() > MAX_CHUNK {
                let middle = chunk
                    .keys()
                    .nth(chunk.len() / 2)
                    .cloned()
                    .expect("a full chunk has a middle key");
                debug_assert!(middle > *bound);
                let upper = chunk.split_off(&middle);
                self.chunks.insert(middle, Arc::new(upper));
            }
        }
        old
    }

    /// Removes a key; returns its value.
    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        let (bound, chunk) = self
            .chunks
            .range_mut::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .expect("the first chunk's bound is the empty key, below every key");
        if !chunk.contains_key(key) {
            return None;
        }
        let chunk = Arc::make_mut(chunk);
        let old = chunk.remove(key);
        self.len -= 1;
        if chunk.is_empty() && !bound.is_empty() {
            let bound = bound.clone();
            self.chunks.remove(&bound);
        }
        old
    }

    /// The entry with the smallest key.
    pub fn first(&self) -> Option<(&Vec<u8>, &V)> {
        self.iter().next()
    }

    /// All entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &V)> {
        self.chunks.values().flat_map(|c| c.iter())
    }

    /// Entries in key order from `lower` on.
    pub fn range_from(&self, lower: Bound<&[u8]>) -> impl Iterator<Item = (&Vec<u8>, &V)> {
        let start: &[u8] = match lower {
            Bound::Included(k) | Bound::Excluded(k) => k,
            Bound::Unbounded => &[],
        };
        let (first, chunk) = self.chunk_of(start);
        // Only the first chunk needs the bound: every later chunk lies above it.
        let head = chunk.range::<[u8], _>((lower, Bound::Unbounded));
        let rest = self
            .chunks
            .range::<Vec<u8>, _>((Bound::Excluded(first), Bound::Unbounded))
            .flat_map(|(_, c)| c.iter());
        head.chain(rest)
    }
}

impl<V: Clone + PartialEq> PartialEq for ChunkedMap<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<V: Clone + Eq> Eq for ChunkedMap<V> {}

impl<V: Clone + fmt::Debug> fmt::Debug for ChunkedMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V: Clone> ChunkedMap<V> {
    /// Checks the partition rules (tests).
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let bounds: Vec<&Vec<u8>> = self.chunks.keys().collect();
        if bounds.first().map(|b| b.is_empty()) != Some(true) {
            return Err("the first chunk's bound is not the empty key".into());
        }
        let mut count = 0;
        for (i, (bound, chunk)) in self.chunks.iter().enumerate() {
            if chunk.len() > MAX_CHUNK {
                return Err(format!("chunk {i} holds {} keys", chunk.len()));
            }
            if i > 0 && chunk.is_empty() {
                return Err(format!("chunk {i} is empty"));
            }
            let next = bounds.get(i + 1);
            for k in chunk.keys() {
                if k < bound || next.is_some_and(|n| k >= *n) {
                    return Err(format!("key {k:?} outside chunk {i}"));
                }
            }
            count += chunk.len();
        }
        if count != self.len {
            return Err(format!("len {} but {count} keys", self.len));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::Rng;

    type Model = BTreeMap<Vec<u8>, u64>;

    #[test]
    fn behaves_like_a_btreemap_and_keeps_its_partition() {
        for seed in 0..20u64 {
            let mut rng = Rng::new(seed);
            let mut model = Model::new();
            let mut map: ChunkedMap<u64> = ChunkedMap::new();
            let mut copies: Vec<(ChunkedMap<u64>, Model)> = Vec::new();
            let space = 1 + rng.below(5000);
            for step in 0..20_000u64 {
                let key = format!("{:05}", rng.below(space)).into_bytes();
                if rng.below(3) == 0 {
                    assert_eq!(
                        map.remove(&key),
                        model.remove(&key),
                        "seed {seed} step {step}"
                    );
                } else {
                    assert_eq!(
                        map.insert(key.clone(), step),
                        model.insert(key, step),
                        "seed {seed} step {step}"
                    );
                }
                if rng.below(2000) == 0 {
                    copies.push((map.clone(), model.clone()));
                }
            }
            map.check_invariants().unwrap();
            assert_eq!(map.len(), model.len());
            assert!(map.iter().map(|(k, v)| (k.clone(), *v)).eq(model.clone()));
            // Copies taken along the way were not changed by later writes.
            for (copy, at) in &copies {
                copy.check_invariants().unwrap();
                assert!(copy.iter().map(|(k, v)| (k.clone(), *v)).eq(at.clone()));
            }
            // Ranges, from every kind of bound, match.
            for probe in ["", "0", "00100", "02500", "99999", "00100x"] {
                let p = probe.as_bytes();
                for (lower, mlower) in [
                    (Bound::Included(p), Bound::Included(p.to_vec())),
                    (Bound::Excluded(p), Bound::Excluded(p.to_vec())),
                ] {
                    let got: Vec<_> = map.range_from(lower).take(50).collect();
                    let want: Vec<_> = model.range((mlower, Bound::Unbounded)).take(50).collect();
                    assert_eq!(got, want, "seed {seed} probe {probe}");
                }
            }
            let rebuilt = ChunkedMap::from_sorted(model.clone());
            rebuilt.check_invariants().unwrap();
            assert_eq!(rebuilt, map);
        }
    }

    #[test]
    fn a_copy_shares_chunks_until_written() {
        let map = ChunkedMap::from_sorted((0..100_000u32).map(|i| (i.to_be_bytes().to_vec(), i)));
        assert!(map.chunks() > 100);
        let mut live = map.clone();
        let shared = |a: &ChunkedMap<u32>, b: &ChunkedMap<u32>| {
            a.chunks
                .values()
                .zip(b.chunks.values())
                .filter(|(x, y)| Arc::ptr_eq(x, y))
                .count()
        };
        assert_eq!(shared(&map, &live), map.chunks());
        live.insert(5u32.to_be_bytes().to_vec(), 0);
        live.remove(&7u32.to_be_bytes()); // same chunk: already copied
        live.remove(b"absent"); // absent: copies nothing
        assert_eq!(shared(&map, &live), map.chunks() - 1);
        assert_eq!(map.get(&5u32.to_be_bytes()), Some(&5));
        assert_eq!(live.get(&5u32.to_be_bytes()), Some(&0));
    }

    #[test]
    fn emptied_chunks_are_dropped_and_the_first_stays() {
        let mut map = ChunkedMap::from_sorted((0..5000u32).map(|i| (i.to_be_bytes().to_vec(), i)));
        for i in 0..5000u32 {
            assert_eq!(map.remove(&i.to_be_bytes()), Some(i));
        }
        map.check_invariants().unwrap();
        assert_eq!(map.chunks(), 1);
        assert!(map.is_empty());
        assert_eq!(map, ChunkedMap::new());
        assert_eq!(
            ChunkedMap::<u32>::from_sorted(Vec::new()),
            ChunkedMap::new()
        );
    }
}
