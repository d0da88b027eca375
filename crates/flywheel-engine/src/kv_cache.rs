//! Per-sequence key/value cache of the sampling path.
//!
//! Each sequence owns its cache instead of occupying a row of one padded batch tensor. That makes
//! three things free that a padded `(batch, heads, max_len, head_dim)` cache makes awkward:
//! sequences of different lengths need no padding or mask; a finished sequence leaves the batch by
//! being dropped (nothing is compacted); and the `n` samples of one prompt share the prompt's keys
//! and values through an [`Arc`] (prefilled once, never copied), adding only their own tokens.
//! It also makes a sequence's attention independent of its batch neighbours, which is half of what
//! makes sampling reproducible however the requests are batched (see `infer.rs` for the other half).

use std::sync::Arc;

/// Keys and values of one layer, `len × kv_width` each, row-major.
#[derive(Debug, Clone, Default)]
struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
}

/// The keys and values of one sequence, for every layer: an optional shared, frozen prefix (the
/// prompt) followed by the sequence's own entries.
#[derive(Debug, Clone)]
pub(crate) struct KvCache {
    prefix: Option<Arc<KvCache>>,
    layers: Vec<LayerKv>,
    own_len: usize,
    kv_width: usize,
}

impl KvCache {
    /// An empty cache for `layers` layers whose entries are `kv_width` floats wide.
    pub fn new(layers: usize, kv_width: usize) -> Self {
        Self { prefix: None, layers: vec![LayerKv::default(); layers], own_len: 0, kv_width }
    }

    /// An empty cache that continues `prefix` (shared, not copied).
    pub fn extending(prefix: Arc<KvCache>) -> Self {
        let mut cache = Self::new(prefix.layers.len(), prefix.kv_width);
        // Keep the chain one level deep: a prefix that itself extends another is flattened.
        cache.prefix = Some(if prefix.prefix.is_some() { Arc::new(prefix.flattened()) } else { prefix });
        cache
    }

    /// Number of entries (positions) held, prefix included.
    pub fn len(&self) -> usize {
        self.prefix.as_ref().map_or(0, |p| p.len()) + self.own_len
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

    /// The keys and values of `layer` as up to two contiguous segments (prefix, own), each a pair
    /// of `entries × kv_width` slices.
    pub fn segments(&self, layer: usize) -> impl Iterator<Item = (&[f32], &[f32])> {
        let prefix = self.prefix.as_ref().map(|p| (p.layers[layer].k.as_slice(), p.layers[layer].v.as_slice()));
        let own = (self.layers[layer].k.as_slice(), self.layers[layer].v.as_slice());
        prefix.into_iter().chain(std::iter::once(own))
    }

    /// A copy with the prefix folded into the own entries.
    fn flattened(&self) -> Self {
        let mut out = Self::new(self.layers.len(), self.kv_width);
        for layer in 0..self.layers.len() {
            for (k, v) in self.segments(layer) {
                out.push(layer, k, v);
            }
        }
        out
    }

    /// Freezes the cache so that several sequences can extend it.
    pub fn into_shared(self) -> Arc<Self> {
        Arc::new(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(b.segments(0).count(), 2);
    }
}
