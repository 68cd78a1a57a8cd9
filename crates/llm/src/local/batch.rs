//! What the batched engine needs from a model: many sequences in one forward pass, each with its
//! own KV cache ([`SeqKv`]), and the cache of prompt prefixes they share ([`PrefixCache`]).
//!
//! A forward takes a ragged batch: for each sequence, the tokens that follow what its cache
//! holds (a whole prompt remainder, or the one token just sampled). The linear layers run over
//! all rows at once, which is where batching pays: a decode step of ten sequences reads the
//! weights once instead of ten times. Attention runs per sequence against its own cache.

use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use crate::model::lora::AdapterSlot;

/// A model the engine can drive in ragged batches.
pub trait BatchLm: Send {
    /// An empty KV cache for one sequence that will hold up to `capacity` positions.
    fn new_seq(&self, capacity: usize) -> Result<SeqKv>;
    /// Feed each `(cache, tokens)` pair: `tokens` follow the cache's positions and are appended
    /// to it. Returns the logits after the last token of each pair, in order. `dense` asks for
    /// the f32 weights (prompt passes); otherwise the quantized ones (decode steps). Either way
    /// a pair's keys, values and logits are the same bits as when it is fed alone, so a
    /// sequence's tokens do not depend on what it was batched with.
    fn forward_batch(&mut self, items: &mut [(&mut SeqKv, &[u32])], dense: bool) -> Result<Vec<Vec<f32>>>;
    /// Longest sequence the model covers.
    fn max_seq_len(&self) -> usize;
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

/// The keys and values of one sequence, per layer `[kv_heads, capacity, head_dim]`, filled up
/// to `len` positions. Preallocated: appending a token writes in place instead of copying the
/// whole cache, which is what a concatenating cache costs per decode step.
pub struct SeqKv {
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
    capacity: usize,
}

impl SeqKv {
    pub fn new(n_layers: usize, kv_heads: usize, head_dim: usize, capacity: usize) -> Result<SeqKv> {
        let mut layers = Vec::with_capacity(n_layers);
        for _ in 0..n_layers {
            let z = || Tensor::zeros((kv_heads, capacity, head_dim), DType::F32, &Device::Cpu);
            layers.push((z()?, z()?));
        }
        Ok(SeqKv { layers, len: 0, capacity })
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
        self.layers.iter().map(|(k, v)| (k.elem_count() + v.elem_count()) * 4).sum()
    }

    /// Write `k` and `v` (`[kv_heads, t, head_dim]`, contiguous) of `layer` at position `pos`.
    pub fn write(&self, layer: usize, pos: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let (kc, vc) = &self.layers[layer];
        kc.slice_set(k, 1, pos)?;
        vc.slice_set(v, 1, pos)?;
        Ok(())
    }

    /// Write one position's keys and values (`kv_heads·head_dim` values each, head-major) of
    /// `layer` at `pos`.
    pub fn write_row(&self, layer: usize, pos: usize, k: &[f32], v: &[f32]) -> Result<()> {
        let (kc, _) = &self.layers[layer];
        let (heads, _, hd) = kc.dims3()?;
        let row = |x: &[f32]| Tensor::from_slice(x, (heads, 1, hd), &Device::Cpu);
        self.write(layer, pos, &row(k)?, &row(v)?)
    }

    /// Call `f` with `layer`'s whole key and value buffers, `[kv_heads, capacity, head_dim]`
    /// (positions from `len` on hold stale values), and their capacity.
    pub fn with_layer<R>(&self, layer: usize, f: impl FnOnce(&[f32], &[f32], usize) -> R) -> Result<R> {
        let (kc, vc) = &self.layers[layer];
        let capacity = kc.dims3()?.1;
        let (ks, kl) = kc.storage_and_layout();
        let (vs, vl) = vc.storage_and_layout();
        match (&*ks, &*vs) {
            (candle_core::Storage::Cpu(k), candle_core::Storage::Cpu(v)) => {
                let (k, v) = (k.as_slice::<f32>()?, v.as_slice::<f32>()?);
                let (k, v) = (&k[kl.start_offset()..], &v[vl.start_offset()..]);
                Ok(f(&k[..kc.elem_count()], &v[..vc.elem_count()], capacity))
            }
            _ => bail!("a sequence's cache is not in CPU memory"),
        }
    }

    /// Keys and values of `layer` for positions `0..upto`.
    pub fn view(&self, layer: usize, upto: usize) -> Result<(Tensor, Tensor)> {
        let (k, v) = &self.layers[layer];
        Ok((k.narrow(1, 0, upto)?, v.narrow(1, 0, upto)?))
    }

    /// Mark `len` positions as filled (after every layer was written).
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.capacity);
    }

    /// A copy of the first `len` positions, with no room beyond them (what the prefix cache
    /// keeps).
    pub fn compact(&self, len: usize) -> Result<SeqKv> {
        let len = len.min(self.len);
        let mut layers = Vec::with_capacity(self.layers.len());
        for (k, v) in &self.layers {
            layers.push((k.narrow(1, 0, len)?.contiguous()?, v.narrow(1, 0, len)?.contiguous()?));
        }
        Ok(SeqKv { layers, len, capacity: len })
    }

    /// Copy the first `n` positions of `self` into the empty cache `into`.
    pub fn copy_prefix(&self, n: usize, into: &mut SeqKv) -> Result<()> {
        let n = n.min(self.len).min(into.capacity);
        if n == 0 {
            return Ok(());
        }
        for (i, (k, v)) in self.layers.iter().enumerate() {
            into.write(i, 0, &k.narrow(1, 0, n)?.contiguous()?, &v.narrow(1, 0, n)?.contiguous()?)?;
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
        let k = Tensor::arange(0f32, (2 * len) as f32, &Device::Cpu).unwrap().reshape((1, len, 2)).unwrap();
        s.write(0, 0, &k, &k).unwrap();
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
        let (k, _) = into.view(0, 3).unwrap();
        assert_eq!(k.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![0., 1., 2., 3., 4., 5.]);
        // The cap on reuse (a prompt must leave one token to compute) applies.
        assert_eq!(c.lookup(&[1, 2, 3, 4], 3).unwrap().len, 3);
        assert!(c.lookup(&[5], 1).is_none());
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
