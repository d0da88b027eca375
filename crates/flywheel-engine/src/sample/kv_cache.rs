//! Per-sequence key/value cache of the sampling path.
//!
//! Each sequence owns its cache instead of occupying a row of one padded batch tensor. That makes
//! three things free that a padded `(batch, heads, max_len, head_dim)` cache makes awkward:
//! sequences of different lengths need no padding or mask; a finished sequence leaves the batch by
//! being dropped (nothing is compacted); and the `n` samples of one prompt share the prompt's keys
//! and values through an [`Arc`] (prefilled once, never copied), adding only their own tokens.
//! Sharing nests: prompts that begin alike extend one cache of their common beginning, and their
//! samples extend those, each level stored once and read in place.
//! It also makes a sequence's attention independent of its batch neighbours, which is half of what
//! makes sampling reproducible however the requests are batched (see `infer.rs` for the other half).

use std::sync::Arc;

/// Keys and values of one layer, `len × kv_width` each, row-major.
#[derive(Debug, Clone, Default)]
struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
}

/// The keys and values of one sequence, for every layer: a chain of shared, frozen prefixes
/// (outermost first: say a few-shot preamble shared by many prompts, then one prompt shared by its
/// samples) followed by the sequence's own entries.
///
/// Each level stores only its own entries; a cache that extends another holds an [`Arc`] to every
/// level of the other's chain, so chains of any depth are read in place and nothing is copied.
#[derive(Debug, Clone)]
pub(crate) struct KvCache {
    /// The frozen levels this cache continues, outermost first; each holds only its own entries.
    ancestors: Vec<Arc<KvCache>>,
    layers: Vec<LayerKv>,
    own_len: usize,
    kv_width: usize,
}

impl KvCache {
    /// An empty cache for `layers` layers whose entries are `kv_width` floats wide.
    pub fn new(layers: usize, kv_width: usize) -> Self {
        Self { ancestors: Vec::new(), layers: vec![LayerKv::default(); layers], own_len: 0, kv_width }
    }

    /// An empty cache that continues `prefix` (its whole chain shared, nothing copied).
    pub fn extending(prefix: Arc<KvCache>) -> Self {
        let mut cache = Self::new(prefix.layers.len(), prefix.kv_width);
        cache.ancestors.reserve(prefix.ancestors.len() + 1);
        cache.ancestors.extend(prefix.ancestors.iter().cloned());
        cache.ancestors.push(prefix);
        cache
    }

    /// Number of entries (positions) held, prefixes included.
    pub fn len(&self) -> usize {
        self.ancestors.iter().map(|a| a.own_len).sum::<usize>() + self.own_len
    }

    /// Appends the keys and values of `rows` new tokens to `layer`. Callers append to every layer
    /// in turn; the length grows when the last layer is written.
    pub fn push(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        let last = layer + 1 == self.layers.len();
        let entry = &mut self.layers[layer];
        entry.k.extend_from_slice(k);
        entry.v.extend_from_slice(v);
        if last {
            self.own_len = entry.k.len() / self.kv_width;
        }
    }

    /// The keys and values of `layer` as contiguous segments in position order, one per level of
    /// the chain (every prefix, then the own entries), each a pair of `entries × kv_width` slices.
    /// A level may be empty.
    pub fn segments(&self, layer: usize) -> impl Iterator<Item = (&[f32], &[f32])> {
        self.ancestors.iter().map(|a| &**a).chain(std::iter::once(self)).map(move |c| c.own_segment(layer))
    }

    /// This level's own keys and values of `layer`.
    fn own_segment(&self, layer: usize) -> (&[f32], &[f32]) {
        (self.layers[layer].k.as_slice(), self.layers[layer].v.as_slice())
    }

    /// Freezes the cache so that several sequences can extend it.
    pub fn into_shared(self) -> Arc<Self> {
        Arc::new(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends one entry per value of `keys` (as a `[key, -key]` row; values are keys + 100).
    fn push_all(cache: &mut KvCache, keys: &[f32]) {
        let k: Vec<f32> = keys.iter().flat_map(|&x| [x, -x]).collect();
        let v: Vec<f32> = k.iter().map(|x| x + 100.0).collect();
        for layer in 0..2 {
            cache.push(layer, &k, &v);
        }
    }

    /// Every key row of `layer`'s segments, first column only, and the segment lengths.
    fn keys(cache: &KvCache, layer: usize) -> (Vec<f32>, Vec<usize>) {
        let rows = cache.segments(layer).flat_map(|(k, _)| k.chunks_exact(2).map(|r| r[0])).collect();
        (rows, cache.segments(layer).map(|(k, _)| k.len() / 2).collect())
    }

    #[test]
    fn extension_shares_the_prefix_and_appends() {
        let mut prompt = KvCache::new(2, 2);
        for layer in 0..2 {
            prompt.push(layer, &[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0]);
        }
        assert_eq!(prompt.len(), 2);
        let shared = prompt.into_shared();
        let mut a = KvCache::extending(shared.clone());
        for layer in 0..2 {
            a.push(layer, &[9.0, 9.0], &[0.0, 0.0]);
        }
        assert_eq!(a.len(), 3);
        let keys: Vec<f32> = a.segments(1).flat_map(|(k, _)| k.iter().copied()).collect();
        assert_eq!(keys, [1.0, 2.0, 3.0, 4.0, 9.0, 9.0]);
        assert_eq!(Arc::strong_count(&shared), 2);
        let b = KvCache::extending(Arc::new(a));
        assert_eq!(b.len(), 3);
        assert_eq!(b.segments(0).count(), 3, "one segment per level, the empty own one included");
    }

    #[test]
    fn chains_of_depth_three_are_read_in_place() {
        let mut root = KvCache::new(2, 2);
        push_all(&mut root, &[1.0, 2.0, 3.0]);
        let root = root.into_shared();
        let mut mid = KvCache::extending(root.clone());
        push_all(&mut mid, &[4.0, 5.0]);
        let mid = mid.into_shared();
        let (mut a, mut b) = (KvCache::extending(mid.clone()), KvCache::extending(mid.clone()));
        push_all(&mut a, &[6.0]);
        push_all(&mut b, &[7.0, 8.0]);
        push_all(&mut a, &[9.0]);
        assert_eq!((root.len(), mid.len(), a.len(), b.len()), (3, 5, 7, 7));
        for layer in 0..2 {
            assert_eq!(keys(&a, layer), (vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 9.0], vec![3, 2, 2]));
            assert_eq!(keys(&b, layer), (vec![1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 8.0], vec![3, 2, 2]));
        }
        let values: Vec<f32> = a.segments(1).flat_map(|(_, v)| v.chunks_exact(2).map(|r| r[1])).collect();
        assert_eq!(values, [99.0, 98.0, 97.0, 96.0, 95.0, 94.0, 91.0]);
        // Every level is stored once: the root's and the middle's entries are shared, not copied.
        let root_keys = root.segments(0).next().unwrap().0.as_ptr();
        assert_eq!(a.segments(0).next().unwrap().0.as_ptr(), root_keys);
        assert_eq!(b.segments(0).nth(1).unwrap().0.as_ptr(), mid.segments(0).nth(1).unwrap().0.as_ptr());
        assert_eq!(Arc::strong_count(&root), 4, "held by mid, a, b and the test");
        // A fourth level over a sample keeps counting.
        let mut d = KvCache::extending(Arc::new(a));
        push_all(&mut d, &[10.0]);
        assert_eq!(d.len(), 8);
        assert_eq!(keys(&d, 0).1, [3, 2, 2, 1]);
    }
}
