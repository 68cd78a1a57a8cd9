//! What the batched engine needs from a model: many sequences in one forward pass, each with its
//! own KV cache ([`SeqKv`]), and the cache of prompt prefixes they share ([`PrefixCache`]).
//!
//! A forward takes a ragged batch: for each sequence, the tokens that follow what its cache
//! holds (a whole prompt remainder, or the one token just sampled). The linear layers run over
//! all rows at once, which is where batching pays: a decode step of ten sequences reads the
//! weights once instead of ten times. Attention runs per row against its sequence's cache.

use std::sync::Arc;

use anyhow::{bail, Result};
use propersim_kernels::attention::{key_index, KEY_TILE};

use crate::model::lora::AdapterSlot;

/// A model the engine can drive in ragged batches.
pub trait BatchLm: Send {
    /// An empty KV cache for one sequence that will hold up to `capacity` positions.
    fn new_seq(&self, capacity: usize) -> Result<SeqKv>;
    /// Feed each `(cache, tokens)` pair: `tokens` follow the cache's positions and are appended
    /// to it. Returns the logits after the last token of each pair, in order. `dense` asks for
    /// the f32 weights (prompt passes); otherwise the quantized ones (decode steps). Either way
    /// a pair's keys, values and logits are the same bits as when it is fed alone, and a
    /// sequence's keys and values the same however its tokens were split between calls of one
    /// kind, so its tokens depend neither on what it was batched with nor on the prefix cache.
    fn forward_batch(&mut self, items: &mut [(&mut SeqKv, &[u32])], dense: bool) -> Result<Vec<Vec<f32>>>;
    /// Longest sequence the model covers.
    fn max_seq_len(&self) -> usize;
    /// Whether prompt passes multiply by the quantized weights (as decode steps do) rather
    /// than dense f32 ones; their logits are then not the f32 model's.
    fn quantized_prompts(&self) -> bool {
        false
    }
    /// Apply the LoRA adapters `slot` publishes (a trained assistant): [`BatchLm::adopt_adapter`]
    /// takes the newest one. A model that cannot apply LoRA says so, and the engine runs the
    /// single-sequence LoRA model instead.
    fn follow_adapters(&mut self, _slot: Arc<AdapterSlot>) -> Result<()> {
        bail!("this model does not apply LoRA adapters")
    }
    /// The followed slot holds an adapter this model has not adopted yet.
    fn adapter_pending(&self) -> bool {
        false
    }
    /// Adopt the slot's newest adapter; the engine calls it only between sequences (the keys and
    /// values of a sequence belong to one adapter). Returns the adapter's version.
    fn adopt_adapter(&mut self) -> Result<u64> {
        Ok(0)
    }
}

/// The keys and values of one sequence, per layer and key/value head, filled up to `len`
/// positions: the keys transposed in tiles as the attention kernel reads them
/// (`propersim_kernels::attention::key_index`, the capacity rounded up to whole tiles), the values
/// `[capacity, head_dim]`. Preallocated: appending a token writes in place instead of copying the
/// whole cache, which is what a concatenating cache costs per decode step.
pub struct SeqKv {
    /// Per layer, its keys and its values, head after head.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    kv_heads: usize,
    head_dim: usize,
    len: usize,
    capacity: usize,
}

impl SeqKv {
    pub fn new(n_layers: usize, kv_heads: usize, head_dim: usize, capacity: usize) -> Result<SeqKv> {
        let size = |cap: usize| kv_heads.checked_mul(head_dim).and_then(|x| x.checked_mul(cap));
        let (Some(kn), Some(vn)) = (size(capacity.div_ceil(KEY_TILE) * KEY_TILE), size(capacity)) else {
            bail!("a cache of {capacity} positions is too large");
        };
        // Zeroed allocations: the pages are only touched as positions are written.
        let layers = (0..n_layers).map(|_| (vec![0f32; kn], vec![0f32; vn])).collect();
        Ok(SeqKv { layers, kv_heads, head_dim, len: 0, capacity })
    }

    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Memory held (the whole capacity).
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|(k, v)| (k.len() + v.len()) * 4).sum()
    }

    /// Values of one key head (a whole number of tiles).
    fn key_head_len(&self) -> usize {
        self.capacity.div_ceil(KEY_TILE) * KEY_TILE * self.head_dim
    }

    /// Write the keys and values of `t` positions of `layer` from `pos` on: `k` and `v` are
    /// `[t, kv_heads·head_dim]`, row-major (as the projections produce them).
    pub fn write_rows(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) -> Result<()> {
        let (heads, hd, cap) = (self.kv_heads, self.head_dim, self.capacity);
        let width = heads * hd;
        let t = k.len() / width.max(1);
        if k.len() != t * width || v.len() != k.len() || pos + t > cap || layer >= self.layers.len() {
            bail!("{t} positions from {pos} do not fit a cache of {cap} ({} values for rows of {width})", k.len());
        }
        let key_head = self.key_head_len();
        let (kc, vc) = &mut self.layers[layer];
        for (r, (krow, vrow)) in k.chunks_exact(width).zip(v.chunks_exact(width)).enumerate() {
            for (h, (kh, vh)) in krow.chunks_exact(hd).zip(vrow.chunks_exact(hd)).enumerate() {
                for (d, x) in kh.iter().enumerate() {
                    kc[h * key_head + key_index(pos + r, d, hd)] = *x;
                }
                let at = (h * cap + pos + r) * hd;
                vc[at..at + hd].copy_from_slice(vh);
            }
        }
        Ok(())
    }

    /// Key head `h` of `layer` (tiled, see [`SeqKv`]) and its value head (`[capacity,
    /// head_dim]`); positions from `len` on hold stale values.
    pub fn head(&self, layer: usize, h: usize) -> (&[f32], &[f32]) {
        let (k, v) = &self.layers[layer];
        let (kn, vn) = (self.key_head_len(), self.capacity * self.head_dim);
        (&k[h * kn..(h + 1) * kn], &v[h * vn..(h + 1) * vn])
    }

    /// Mark `len` positions as filled (after every layer was written).
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.capacity);
    }

    /// A copy of the first `len` positions, with no room beyond them (what the prefix cache
    /// keeps).
    pub fn compact(&self, len: usize) -> Result<SeqKv> {
        let len = len.min(self.len);
        let mut out = SeqKv::new(self.layers.len(), self.kv_heads, self.head_dim, len)?;
        self.copy_prefix(len, &mut out)?;
        Ok(out)
    }

    /// Copy the first `n` positions of `self` into the empty cache `into`.
    pub fn copy_prefix(&self, n: usize, into: &mut SeqKv) -> Result<()> {
        let n = n.min(self.len).min(into.capacity);
        if (into.kv_heads, into.head_dim, into.layers.len()) != (self.kv_heads, self.head_dim, self.layers.len()) {
            bail!("the caches have different shapes");
        }
        let hd = self.head_dim;
        let (whole, rest) = (n / KEY_TILE * KEY_TILE, n % KEY_TILE);
        let (kn, ikn) = (self.key_head_len(), into.key_head_len());
        for ((k, v), (ik, iv)) in self.layers.iter().zip(&mut into.layers) {
            for h in 0..self.kv_heads {
                // Whole key tiles in one copy, then the first `rest` positions of the next.
                let (src, dst) = (&k[h * kn..(h + 1) * kn], &mut ik[h * ikn..(h + 1) * ikn]);
                dst[..whole * hd].copy_from_slice(&src[..whole * hd]);
                for d in (0..hd).filter(|_| rest > 0) {
                    let at = key_index(whole, d, hd);
                    dst[at..at + rest].copy_from_slice(&src[at..at + rest]);
                }
                let (from, to) = (h * self.capacity * hd, h * into.capacity * hd);
                iv[to..to + n * hd].copy_from_slice(&v[from..from + n * hd]);
            }
        }
        into.len = n;
        Ok(())
    }
}

struct Entry {
    tokens: Vec<u32>,
    kv: SeqKv,
    last_used: u64,
}

/// Token prefixes whose KV is already computed: a prompt that starts like a cached one only
/// computes the rest. In this simulation nearly every prompt shares a long prefix with a recent
/// one (the two candidates of a step share all of it; the evaluator's ten checks share the
/// persona, rubric and memory; consecutive steps share most of it). Entries are whole
/// sequences; a lookup takes the entry with the longest common prefix (linear in the number of
/// entries, which the memory cap keeps small). Least recently used entries go first when the
/// total passes the cap.
pub struct PrefixCache {
    entries: Vec<Entry>,
    cap_bytes: usize,
    clock: u64,
}

/// What a lookup found: how many positions to copy from which entry.
pub struct PrefixHit<'a> {
    pub kv: &'a SeqKv,
    pub len: usize,
}

impl PrefixCache {
    pub fn new(cap_bytes: usize) -> PrefixCache {
        PrefixCache { entries: Vec::new(), cap_bytes, clock: 0 }
    }

    /// The longest cached prefix of `tokens`, at most `max_len` positions.
    pub fn lookup(&mut self, tokens: &[u32], max_len: usize) -> Option<PrefixHit<'_>> {
        self.clock += 1;
        let mut best: Option<(usize, usize)> = None;
        for (i, e) in self.entries.iter().enumerate() {
            let n = common_prefix(&e.tokens[..e.kv.len().min(e.tokens.len())], tokens).min(max_len);
            if n > 0 && best.is_none_or(|(_, b)| n > b) {
                best = Some((i, n));
            }
        }
        let (i, len) = best?;
        self.entries[i].last_used = self.clock;
        Some(PrefixHit { kv: &self.entries[i].kv, len })
    }

    /// Keep `kv` (whose positions are `tokens[..kv.len()]`). Entries it extends are dropped:
    /// it answers every lookup they would.
    pub fn insert(&mut self, mut tokens: Vec<u32>, kv: SeqKv) {
        tokens.truncate(kv.len());
        if tokens.is_empty() || kv.bytes() > self.cap_bytes {
            return;
        }
        self.clock += 1;
        self.entries.retain(|e| !(e.tokens.len() <= tokens.len() && tokens.starts_with(&e.tokens)));
        if self.entries.iter().any(|e| e.tokens.starts_with(&tokens)) {
            return;
        }
        let kv = if kv.capacity() > kv.len() + 16 { kv.compact(kv.len()).unwrap_or(kv) } else { kv };
        self.entries.push(Entry { tokens, kv, last_used: self.clock });
        while self.bytes() > self.cap_bytes {
            let Some(oldest) = self.entries.iter().enumerate().min_by_key(|(_, e)| e.last_used).map(|(i, _)| i) else {
                break;
            };
            self.entries.swap_remove(oldest);
        }
    }

    /// Forget everything (the model changed, so every cached key and value is stale).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.kv.bytes()).sum()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// How many leading tokens `a` and `b` share.
pub(crate) fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(len: usize) -> SeqKv {
        let mut s = SeqKv::new(1, 1, 2, len).unwrap();
        let k: Vec<f32> = (0..2 * len).map(|x| x as f32).collect();
        s.write_rows(0, 0, &k, &k).unwrap();
        s.set_len(len);
        s
    }

    #[test]
    fn longest_prefix_wins_and_copies_exactly() {
        let mut c = PrefixCache::new(1 << 20);
        c.insert(vec![1, 2, 3, 4], kv(4));
        c.insert(vec![1, 2, 9], kv(3));
        let hit = c.lookup(&[1, 2, 3, 7, 7], 10).unwrap();
        assert_eq!(hit.len, 3);
        let mut into = SeqKv::new(1, 1, 2, 8).unwrap();
        hit.kv.copy_prefix(hit.len, &mut into).unwrap();
        assert_eq!(into.len(), 3);
        let keys = into.head(0, 0).0;
        let got: Vec<f32> = (0..3).flat_map(|p| (0..2).map(move |d| keys[key_index(p, d, 2)])).collect();
        assert_eq!(got, [0., 1., 2., 3., 4., 5.]);
        // The cap on reuse (a prompt must leave one token to compute) applies.
        assert_eq!(c.lookup(&[1, 2, 3, 4], 3).unwrap().len, 3);
        assert!(c.lookup(&[5], 1).is_none());
    }

    #[test]
    fn rows_land_in_their_heads_and_copies_keep_them_at_any_capacity() {
        // Two heads of three values; rows [t, heads·head_dim] as a projection writes them.
        let (hd, n) = (3, 20);
        let mut s = SeqKv::new(2, 2, hd, 21).unwrap();
        let k: Vec<f32> = (0..n * 2 * hd).map(|x| x as f32).collect();
        let v: Vec<f32> = k.iter().map(|x| -x).collect();
        s.write_rows(1, 0, &k[..6], &v[..6]).unwrap();
        s.write_rows(1, 1, &k[6..], &v[6..]).unwrap();
        s.set_len(n);
        // Position p, head h, dimension d came from k[p·6 + h·3 + d].
        let check = |s: &SeqKv| {
            for h in 0..2 {
                let (keys, values) = s.head(1, h);
                for p in 0..n {
                    for d in 0..hd {
                        let want = (p * 2 * hd + h * hd + d) as f32;
                        assert_eq!(keys[key_index(p, d, hd)], want, "key {p} {h} {d}");
                        assert_eq!(values[p * hd + d], -want, "value {p} {h} {d}");
                    }
                }
            }
        };
        check(&s);
        // The compact copy ends at 20 positions (two tiles, the second partial).
        let c = s.compact(n).unwrap();
        assert_eq!(c.capacity(), n);
        check(&c);
        // And a copy of whole tiles that fills its target exactly.
        let mut exact = SeqKv::new(2, 2, hd, 16).unwrap();
        s.copy_prefix(16, &mut exact).unwrap();
        assert_eq!(exact.head(1, 1).0[key_index(15, 2, hd)], (15 * 2 * hd + hd + 2) as f32);
        let mut into = SeqKv::new(2, 2, hd, 40).unwrap();
        c.copy_prefix(n, &mut into).unwrap();
        check(&into);
        // Past the capacity, or rows of the wrong width: an error, nothing written.
        assert!(s.write_rows(0, 20, &k[..12], &v[..12]).is_err());
        assert!(s.write_rows(0, 0, &k[..5], &v[..5]).is_err());
        assert!(SeqKv::new(1, 1, 3, 2).unwrap().copy_prefix(1, &mut into).is_err());
    }

    #[test]
    fn extensions_replace_their_prefix_and_the_cap_evicts_the_oldest() {
        let one = kv(4).bytes();
        let mut c = PrefixCache::new(2 * one);
        c.insert(vec![1, 2], kv(2));
        c.insert(vec![1, 2, 3, 4], kv(4));
        assert_eq!(c.len(), 1, "the longer entry answers every lookup the shorter one would");
        c.insert(vec![7, 7, 7, 7], kv(4));
        c.lookup(&[1, 2, 3], 3);
        c.insert(vec![8, 8, 8, 8], kv(4));
        assert!(c.bytes() <= 2 * one);
        assert!(c.lookup(&[7, 7], 2).is_none(), "least recently used goes first");
        assert_eq!(c.lookup(&[1, 2], 2).unwrap().len, 2);
    }
}
