//! Our own llama-family forward pass, built only from differentiable candle ops.
//!
//! Why not `candle_transformers`: in candle 0.11 its llama models use fused kernels
//! (`rms_norm`, `softmax_last_dim`, `rope_i`, `QMatMul`) that silently return no gradient, and
//! `quantized_llama` only returns the last position's logits. DPO/KTO need per-token log-probs over
//! the whole completion and gradients into LoRA adapters, so this file uses `rms_norm_slow`,
//! `ops::softmax`, `rope_i_slow`, explicit attention and plain matmuls on dense (dequantized)
//! weights. Weights follow the GGUF layout: q/k rows are permuted for *interleaved* RoPE, which is
//! why we use `rope_i_slow` (see `propersim_train::adapter` for the conversion to PEFT's HF layout).
//!
//! The same base serves inference through [`LlamaSession`] (KV cache, [`CausalLm`]) with the
//! current adapter applied, so the trained adapter is what the assistant samples from.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{bail, CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor, Var, D};

use super::lora::{AdapterSlot, LoraAdapter, LoraTarget};
pub use super::shape::LlamaConfig;
use super::CausalLm;
pub use crate::config::TrainWeights;

/// One frozen base matrix `[out, in]` (GGUF/PyTorch layout), dense or as quantized blocks.
/// Cheap to clone: both variants are reference-counted.
#[derive(Clone)]
enum Frozen {
    /// Stored in its own dtype (f32 or bf16); converted on use when the compute dtype differs.
    Dense(Tensor),
    /// GGUF blocks, dequantized for each use and dropped after it, so at most one or two whole
    /// matrices exist in the compute dtype at any moment.
    Quant(Arc<QTensor>),
}

impl Frozen {
    /// The matrix in `dtype`: a view when stored so, else a transient copy.
    fn dense(&self, dtype: DType) -> Result<Tensor> {
        match self {
            Frozen::Dense(t) if t.dtype() == dtype => Ok(t.clone()),
            Frozen::Dense(t) => t.to_dtype(dtype),
            Frozen::Quant(q) => q.dequantize(&q.device())?.to_dtype(dtype),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Frozen::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Frozen::Quant(q) => q.storage_size_in_bytes(),
        }
    }

    fn dims(&self) -> &[usize] {
        match self {
            Frozen::Dense(t) => t.dims(),
            Frozen::Quant(q) => q.shape().dims(),
        }
    }

    /// Rows `ids` of an embedding matrix, in `dtype` (quantized: only those rows are decoded).
    fn rows(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        let t = match self {
            Frozen::Dense(t) => t.index_select(ids, 0)?,
            Frozen::Quant(q) => q.embedding(ids)?,
        };
        if t.dtype() == dtype {
            Ok(t)
        } else {
            t.to_dtype(dtype)
        }
    }
}

/// One transformer block's frozen weights. Norm weights are small and always dense in the
/// compute dtype.
struct Block {
    attn_norm: Tensor,
    wq: Frozen,
    wk: Frozen,
    wv: Frozen,
    wo: Frozen,
    ffn_norm: Tensor,
    w_gate: Frozen,
    w_up: Frozen,
    w_down: Frozen,
}

/// Options of one forward pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardOpts {
    /// Training mode: LoRA dropout is applied when the adapter's dropout is on.
    pub train: bool,
}

/// Where the tokens of a packed batch sit: each token's RoPE position and attention segment,
/// row-major `[rows, len]`. A token sees the earlier tokens of segment 0 and of its own segment
/// only, so several completions can follow one prompt, each as if it were alone after it: DPO
/// computes the prompt it shares between chosen and rejected once instead of twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packing {
    pub rows: usize,
    pub len: usize,
    pub positions: Vec<u32>,
    pub segments: Vec<u32>,
}

/// The segment of padding: it sees everything before it, and no real token reads it.
pub const PAD_SEGMENT: u32 = u32::MAX;

/// RoPE tables and additive attention mask of one forward pass: shared by every row (`cos`
/// `[s, d/2]`, mask `[s, total]`, the inference path) or per row (`[b, s, d/2]`, `[b, 1, s, s]`).
struct Attend {
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
    per_row: bool,
}

/// Per-layer key/value cache of the inference path: `[b, kv_heads, t, head_dim]`, after RoPE.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

/// A llama model with frozen weights (dense, or quantized blocks: [`TrainWeights`]). Cheap to
/// share: tensors are reference-counted.
pub struct Llama {
    cfg: LlamaConfig,
    embed: Frozen,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Frozen,
    /// The head is the embedding matrix (stored once).
    tied: bool,
    /// The compute dtype: activations, norms, LoRA, gradients.
    dtype: DType,
    weights: TrainWeights,
    device: Device,
}

impl Llama {
    /// Build from dense tensors named as in GGUF (`token_embd.weight`, `blk.N.attn_q.weight`,
    /// ...). All tensors are converted to the dtype of `token_embd.weight`, which is also the
    /// compute dtype. A missing `output.weight` means tied embeddings (SmolLM2).
    pub fn from_tensors(cfg: LlamaConfig, tensors: HashMap<String, Tensor>) -> Result<Self> {
        let Some(embed) = tensors.get("token_embd.weight") else { bail!("missing tensor token_embd.weight") };
        let (dtype, device) = (embed.dtype(), embed.device().clone());
        let weights = if dtype == DType::BF16 { TrainWeights::Bf16 } else { TrainWeights::F32 };
        let tensors = tensors
            .into_iter()
            .map(|(k, t)| Ok((k, Frozen::Dense(t.to_dtype(dtype)?.to_device(&device)?.contiguous()?))))
            .collect::<Result<HashMap<_, _>>>()?;
        Self::assemble(cfg, tensors, weights, dtype, &device)
    }

    /// Build from GGUF tensors (as a file holds them, or quantized with `QTensor::quantize`),
    /// holding the projection and embedding matrices as `weights` says and computing in `dtype`.
    /// In [`TrainWeights::Quantized`] a matrix the file stores as f32 stays dense f32.
    pub fn from_qtensors(
        cfg: LlamaConfig,
        tensors: HashMap<String, QTensor>,
        weights: TrainWeights,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut out = HashMap::with_capacity(tensors.len());
        for (name, q) in tensors {
            let keep_blocks = weights == TrainWeights::Quantized && q.rank() == 2 && q.dtype() != GgmlDType::F32;
            let f = if keep_blocks {
                let q = if q.device().same_device(device) {
                    q
                } else {
                    QTensor::quantize(&q.dequantize(device)?, q.dtype())?
                };
                Frozen::Quant(Arc::new(q))
            } else {
                let store = match weights {
                    TrainWeights::Bf16 if q.rank() == 2 => DType::BF16,
                    TrainWeights::F32 if q.rank() == 2 => DType::F32,
                    // Norm vectors and f32 matrices of a quantized base: small, in the compute dtype.
                    _ => dtype,
                };
                Frozen::Dense(q.dequantize(device)?.to_dtype(store)?.contiguous()?)
            };
            out.insert(name, f);
        }
        Self::assemble(cfg, out, weights, dtype, device)
    }

    fn assemble(
        cfg: LlamaConfig,
        mut tensors: HashMap<String, Frozen>,
        weights: TrainWeights,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        let has_output = tensors.contains_key("output.weight");
        let mut take = |name: &str, shape: &[usize]| -> Result<Frozen> {
            let t = match tensors.remove(name) {
                Some(t) => t,
                None => bail!("missing tensor {name}"),
            };
            if t.dims() != shape {
                bail!("tensor {name} has shape {:?}, expected {shape:?}", t.dims());
            }
            Ok(t)
        };
        // Norm weights: dense in the compute dtype whatever the mode.
        let vector = |f: Frozen| -> Result<Tensor> { f.dense(dtype)?.to_device(device)?.contiguous() };
        let (h, i) = (cfg.hidden, cfg.intermediate);
        let q = cfg.heads * cfg.head_dim;
        let kv = cfg.kv_heads * cfg.head_dim;
        let embed = take("token_embd.weight", &[cfg.vocab, h])?;
        let mut blocks = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let p = format!("blk.{l}.");
            blocks.push(Block {
                attn_norm: vector(take(&format!("{p}attn_norm.weight"), &[h])?)?,
                wq: take(&format!("{p}attn_q.weight"), &[q, h])?,
                wk: take(&format!("{p}attn_k.weight"), &[kv, h])?,
                wv: take(&format!("{p}attn_v.weight"), &[kv, h])?,
                wo: take(&format!("{p}attn_output.weight"), &[h, q])?,
                ffn_norm: vector(take(&format!("{p}ffn_norm.weight"), &[h])?)?,
                w_gate: take(&format!("{p}ffn_gate.weight"), &[i, h])?,
                w_up: take(&format!("{p}ffn_up.weight"), &[i, h])?,
                w_down: take(&format!("{p}ffn_down.weight"), &[h, i])?,
            });
        }
        let norm = vector(take("output_norm.weight", &[h])?)?;
        let tied = !has_output;
        let lm_head = if has_output { take("output.weight", &[cfg.vocab, h])? } else { embed.clone() };
        Ok(Llama { cfg, embed, blocks, norm, lm_head, tied, dtype, weights, device: device.clone() })
    }

    /// Load a llama GGUF file with the base dequantized to `dtype` (f32 or bf16) on `device`:
    /// [`Llama::load_gguf_as`] with the matching [`TrainWeights`], computing in `dtype`.
    pub fn load_gguf(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let weights = if dtype == DType::BF16 { TrainWeights::Bf16 } else { TrainWeights::F32 };
        Self::load_gguf_as(path, weights, dtype, device)
    }

    /// Load a llama GGUF file, holding its weights as `weights` says and computing in `dtype`.
    /// Memory (SmolLM2-135M Q4_1): f32 ~540 MB (tied embeddings stored once), bf16 ~270 MB,
    /// quantized ~the file's 90 MB plus one dequantized matrix at a time.
    pub fn load_gguf_as(path: &Path, weights: TrainWeights, dtype: DType, device: &Device) -> Result<Self> {
        let mut file = std::fs::File::open(path)
            .map_err(|e| candle_core::Error::Msg(format!("opening {}: {e}", path.display())))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| candle_core::Error::Msg(format!("reading GGUF {}: {e}", path.display())))?;
        let cfg = LlamaConfig::from_gguf_metadata(&content.metadata)?;
        let mut tensors = HashMap::new();
        let names: Vec<String> = content.tensor_infos.keys().filter(|k| !k.starts_with("rope_")).cloned().collect();
        for name in names {
            let qt = content.tensor(&mut file, &name, device)?;
            tensors.insert(name, qt);
        }
        Self::from_qtensors(cfg, tensors, weights, dtype, device)
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// How the frozen weights are held.
    pub fn train_weights(&self) -> TrainWeights {
        self.weights
    }

    /// Bytes held by the frozen weights (the tied head counted once).
    pub fn weight_bytes(&self) -> usize {
        let el = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let mut n = self.embed.bytes() + el(&self.norm);
        if !self.tied {
            n += self.lm_head.bytes();
        }
        for b in &self.blocks {
            n += el(&b.attn_norm) + el(&b.ffn_norm);
            for w in [&b.wq, &b.wk, &b.wv, &b.wo, &b.w_gate, &b.w_up, &b.w_down] {
                n += w.bytes();
            }
        }
        n
    }

    /// Token embeddings of `ids` (any shape, u32), flattened to `[n, hidden]`.
    fn embed_ids(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed.rows(&ids.flatten_all()?, self.dtype)
    }

    /// Full forward: `ids [b, seq]` (u32) → logits `[b, seq, vocab]`.
    pub fn forward(&self, ids: &Tensor, lora: Option<&LoraAdapter>) -> Result<Tensor> {
        let h = self.forward_hidden(ids, lora, ForwardOpts::default())?;
        self.logits(&h)
    }

    /// Final-normed hidden states `[b, seq, hidden]`; apply [`Llama::logits`] on the positions you
    /// need (training only needs the completion positions, which saves most of the vocab matmul).
    pub fn forward_hidden(&self, ids: &Tensor, lora: Option<&LoraAdapter>, opts: ForwardOpts) -> Result<Tensor> {
        self.run(ids, 0, None, lora, opts)
    }

    /// Project hidden states `[.., hidden]` onto the vocabulary.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let dims = hidden.dims().to_vec();
        let Some((&h, lead)) = dims.split_last() else { bail!("logits of a scalar") };
        let n: usize = lead.iter().product();
        // The head's graph is short (logits → log-softmax → the loss), so keeping its expanded
        // matrix until the backward costs what the backward's own expansion would.
        let y = frozen_linear(&hidden.reshape((n, h))?, &self.lm_head, Keep::Layer)?;
        let mut out = lead.to_vec();
        out.push(self.cfg.vocab);
        y.reshape(out)
    }

    /// Final-normed hidden states `[b, seq, hidden]` of a packed batch (see [`Packing`]).
    pub fn forward_packed(
        &self,
        ids: &Tensor,
        packing: &Packing,
        lora: Option<&LoraAdapter>,
        opts: ForwardOpts,
    ) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let at = self.packed_attend(packing, b, s)?;
        let lora = lora.filter(|l| l.is_enabled());
        let mut x = self.embed_ids(ids)?;
        for l in 0..self.blocks.len() {
            x = self.block(l, &x, b, s, &at, None, lora, opts, Keep::No)?;
        }
        self.final_norm(&x, b, s)
    }

    /// Gradients of the adapter's variables for the scalar `head` returns from the final hidden
    /// states `[b, seq, hidden]` of a packed batch, with gradient checkpointing per decoder layer.
    ///
    /// Why: autograd over the whole model keeps every layer's activations until the backward pass
    /// (for SmolLM2 at 1,500 tokens about 0.4 GB a layer, most of it attention scores, so 12 GB
    /// for 30 layers). Here the forward keeps only each layer's input; the backward recomputes
    /// one layer at a time from its input and pulls the incoming gradient through it
    /// (`sum(y · g)` has gradient `g` at `y`), as Hugging Face's gradient checkpointing does. The
    /// gradients are the same; the cost is one more forward per layer. `head` also returns a
    /// value (the log-probs it saw), handed back with the gradients.
    ///
    /// LoRA dropout would draw a different mask in the recomputation, so it is refused here.
    pub fn packed_grads_checkpointed<T>(
        &self,
        ids: &Tensor,
        packing: &Packing,
        lora: &LoraAdapter,
        opts: ForwardOpts,
        head: impl FnOnce(&Tensor) -> anyhow::Result<(Tensor, T)>,
    ) -> anyhow::Result<(GradStore, T)> {
        if opts.train && lora.dropout_active() {
            anyhow::bail!("gradient checkpointing cannot replay LoRA dropout; turn one of them off");
        }
        let (b, s) = ids.dims2()?;
        let at = self.packed_attend(packing, b, s)?;
        // Forward: keep each layer's input, let its graph go.
        let mut inputs = Vec::with_capacity(self.blocks.len());
        let mut x = self.embed_ids(ids)?.detach();
        for l in 0..self.blocks.len() {
            let y = self.block(l, &x, b, s, &at, None, Some(lora), opts, Keep::Layer)?.detach();
            inputs.push(std::mem::replace(&mut x, y));
        }
        let top = Var::from_tensor(&x)?;
        let (surrogate, value) = head(&self.final_norm(top.as_tensor(), b, s)?)?;
        let mut grad = surrogate.backward()?.remove(top.as_tensor());
        let mut out = GradStore::default();
        for (l, input) in inputs.iter().enumerate().rev() {
            let Some(g) = grad.take() else { break };
            let xin = Var::from_tensor(input)?;
            let y = self.block(l, xin.as_tensor(), b, s, &at, None, Some(lora), opts, Keep::Layer)?;
            let mut grads = (y * g)?.sum_all()?.backward()?;
            for var in lora.layer_vars(l) {
                if let Some(gv) = grads.remove(var.as_tensor()) {
                    out.insert(var.as_tensor(), gv.detach());
                }
            }
            grad = grads.remove(xin.as_tensor()).map(|t| t.detach());
        }
        Ok((out, value))
    }

    fn run(
        &self,
        ids: &Tensor,
        pos: usize,
        mut cache: Option<&mut KvCache>,
        lora: Option<&LoraAdapter>,
        opts: ForwardOpts,
    ) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let lora = lora.filter(|l| l.is_enabled());
        let mut x = self.embed_ids(ids)?; // [b*s, hidden]
        let (cos, sin) = self.rope_tables(pos, s)?;
        let past = match &cache {
            Some(c) => c.layers.first().and_then(|o| o.as_ref()).map(|(k, _)| k.dim(2)).transpose()?.unwrap_or(0),
            None => 0,
        };
        if cache.is_some() && past != pos {
            bail!("KV cache holds {past} positions but the forward starts at position {pos}");
        }
        let at = Attend { cos, sin, mask: causal_mask(s, pos, self.dtype, &self.device)?, per_row: false };
        if let Some(c) = cache.as_deref_mut() {
            c.layers.resize_with(self.cfg.layers, || None);
        }
        for l in 0..self.blocks.len() {
            x = self.block(l, &x, b, s, &at, cache.as_deref_mut(), lora, opts, Keep::No)?;
        }
        self.final_norm(&x, b, s)
    }

    fn final_norm(&self, x: &Tensor, b: usize, s: usize) -> Result<Tensor> {
        let x = candle_nn::ops::rms_norm_slow(x, &self.norm, self.cfg.rms_eps as f32)?;
        x.reshape((b, s, self.cfg.hidden))
    }

    /// Decoder layer `l` on `x [b*s, hidden]`.
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        l: usize,
        x: &Tensor,
        b: usize,
        s: usize,
        at: &Attend,
        cache: Option<&mut KvCache>,
        lora: Option<&LoraAdapter>,
        opts: ForwardOpts,
        keep: Keep,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let blk = &self.blocks[l];
        let scale = 1.0 / (cfg.head_dim as f64).sqrt();
        let proj = |x: &Tensor, w: &Frozen, t: LoraTarget| -> Result<Tensor> {
            let y = frozen_linear(x, w, keep)?;
            match lora {
                Some(ad) => match ad.delta(l, t, x, opts.train)? {
                    Some(d) => y + d,
                    None => Ok(y),
                },
                None => Ok(y),
            }
        };
        // Attention.
        let hn = candle_nn::ops::rms_norm_slow(x, &blk.attn_norm, cfg.rms_eps as f32)?;
        let q = proj(&hn, &blk.wq, LoraTarget::Q)?;
        let k = proj(&hn, &blk.wk, LoraTarget::K)?;
        let v = proj(&hn, &blk.wv, LoraTarget::V)?;
        let q = q.reshape((b, s, cfg.heads, cfg.head_dim))?.transpose(1, 2)?.contiguous()?;
        let k = k.reshape((b, s, cfg.kv_heads, cfg.head_dim))?.transpose(1, 2)?.contiguous()?;
        let v = v.reshape((b, s, cfg.kv_heads, cfg.head_dim))?.transpose(1, 2)?.contiguous()?;
        let (q, k) = if at.per_row {
            (rope_rows(&q, &at.cos, &at.sin)?, rope_rows(&k, &at.cos, &at.sin)?)
        } else {
            (
                candle_nn::rotary_emb::rope_i_slow(&q, &at.cos, &at.sin)?,
                candle_nn::rotary_emb::rope_i_slow(&k, &at.cos, &at.sin)?,
            )
        };
        let (k, v) = match cache {
            Some(c) => {
                let (k, v) = match c.layers[l].take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                c.layers[l] = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        let k = repeat_kv(&k, cfg.heads / cfg.kv_heads)?;
        let v = repeat_kv(&v, cfg.heads / cfg.kv_heads)?;
        let att = (q.matmul(&k.t()?)? * scale)?;
        let att = att.broadcast_add(&at.mask)?;
        let att = candle_nn::ops::softmax(&att, D::Minus1)?;
        let y = att.matmul(&v)?; // [b, heads, s, hd]
        let y = y.transpose(1, 2)?.reshape((b * s, cfg.heads * cfg.head_dim))?;
        let y = proj(&y, &blk.wo, LoraTarget::O)?;
        let x = (x + y)?;
        // SwiGLU MLP.
        let hn = candle_nn::ops::rms_norm_slow(&x, &blk.ffn_norm, cfg.rms_eps as f32)?;
        let g = proj(&hn, &blk.w_gate, LoraTarget::Gate)?;
        let u = proj(&hn, &blk.w_up, LoraTarget::Up)?;
        let m = (g.silu()? * u)?;
        let y = proj(&m, &blk.w_down, LoraTarget::Down)?;
        x + y
    }

    /// RoPE tables `[b, s, head_dim/2]` and the additive mask `[b, 1, s, s]` of a packing.
    fn packed_attend(&self, p: &Packing, b: usize, s: usize) -> Result<Attend> {
        if p.rows != b || p.len != s || p.positions.len() != b * s || p.segments.len() != b * s {
            bail!("packing is {}x{} but the ids are {b}x{s}", p.rows, p.len);
        }
        let half = self.cfg.head_dim / 2;
        let freqs: Vec<f64> =
            (0..half).map(|i| 1.0 / self.cfg.rope_theta.powf(2.0 * i as f64 / self.cfg.head_dim as f64)).collect();
        let mut cos = Vec::with_capacity(b * s * half);
        let mut sin = Vec::with_capacity(b * s * half);
        for &pos in &p.positions {
            for f in &freqs {
                let a = pos as f64 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let mut mask = vec![0f32; b * s * s];
        for r in 0..b {
            let seg = &p.segments[r * s..(r + 1) * s];
            for i in 0..s {
                for j in 0..s {
                    let visible = j <= i && (seg[j] == 0 || seg[j] == seg[i] || seg[i] == PAD_SEGMENT);
                    if !visible {
                        mask[(r * s + i) * s + j] = -1e9;
                    }
                }
            }
        }
        let dev = &self.device;
        Ok(Attend {
            cos: Tensor::from_vec(cos, (b, s, half), dev)?.to_dtype(self.dtype)?,
            sin: Tensor::from_vec(sin, (b, s, half), dev)?.to_dtype(self.dtype)?,
            mask: Tensor::from_vec(mask, (b, 1, s, s), dev)?.to_dtype(self.dtype)?,
            per_row: true,
        })
    }

    /// cos/sin tables `[seq, head_dim/2]` for positions `pos..pos+seq`.
    fn rope_tables(&self, pos: usize, seq: usize) -> Result<(Tensor, Tensor)> {
        let half = self.cfg.head_dim / 2;
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for p in pos..pos + seq {
            for i in 0..half {
                let freq = 1.0 / self.cfg.rope_theta.powf(2.0 * i as f64 / self.cfg.head_dim as f64);
                let a = p as f64 * freq;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (seq, half), &self.device)?.to_dtype(self.dtype)?;
        let sin = Tensor::from_vec(sin, (seq, half), &self.device)?.to_dtype(self.dtype)?;
        Ok((cos, sin))
    }
}

/// `x [n, in] · Wᵀ` for a frozen `W [out, in]`.
///
/// candle's matmul backward always computes the gradient of both operands; for frozen base
/// weights that is wasted work (about a third of a training step, and a vocab-sized buffer for
/// the head). On the CPU this custom op returns only the input gradient, and holds the weight as
/// stored: a quantized or bf16 weight is expanded to the compute dtype inside the forward and
/// used for the backward (`grad · W`) — kept in between when the graph spans one layer
/// ([`Keep::Layer`]), expanded again otherwise — so a full graph never holds the base expanded.
/// Elsewhere (CUDA, half precision) it is a plain matmul on the expanded weight, which the graph
/// keeps until the backward (one layer's worth with checkpointing).
fn frozen_linear(x: &Tensor, w: &Frozen, keep: Keep) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        x.contiguous()?.apply_op1(FrozenLinear { w: w.clone(), keep, expanded: std::sync::OnceLock::new() })
    } else {
        x.matmul(&w.dense(x.dtype())?.t()?)
    }
}

/// Whether a frozen-weight op keeps its expanded matrix for its backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Expand again in the backward: the graph may span every layer (a full-graph backward),
    /// where keeping would hold the whole base expanded.
    No,
    /// Keep it: the graph spans one decoder layer (checkpointing builds, differentiates and
    /// drops one layer at a time) or only the head, so at most one layer's matrices (or the
    /// head) are held, and the backward saves expanding them a second time.
    Layer,
}

struct FrozenLinear {
    w: Frozen,
    keep: Keep,
    expanded: std::sync::OnceLock<Tensor>,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, k) = layout.shape().dims2()?;
        let Some((a, b)) = layout.contiguous_offsets() else { bail!("frozen-linear needs a contiguous input") };
        let x = match storage {
            CpuStorage::F32(v) => Tensor::from_slice(&v[a..b], (n, k), &Device::Cpu)?,
            CpuStorage::F64(v) => Tensor::from_slice(&v[a..b], (n, k), &Device::Cpu)?,
            _ => bail!("frozen-linear handles f32/f64 only"),
        };
        let w = self.w.dense(x.dtype())?;
        let y = x.matmul(&w.t()?)?;
        if self.keep == Keep::Layer {
            let _ = self.expanded.set(w);
        }
        let shape = y.shape().clone();
        let flat = y.flatten_all()?;
        let out = match flat.dtype() {
            DType::F32 => CpuStorage::F32(flat.to_vec1()?),
            _ => CpuStorage::F64(flat.to_vec1()?),
        };
        Ok((out, shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let w = match self.expanded.get() {
            Some(w) if w.dtype() == grad.dtype() => w.clone(),
            _ => self.w.dense(grad.dtype())?,
        };
        Ok(Some(grad.matmul(&w)?))
    }
}

/// Additive causal mask `[seq, pos+seq]`: query i (absolute pos+i) sees keys 0..=pos+i.
/// Right-padded batches need no other mask: padding only ever follows the real tokens.
fn causal_mask(seq: usize, pos: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let total = pos + seq;
    let mut m = vec![0f32; seq * total];
    for i in 0..seq {
        for j in (pos + i + 1)..total {
            m[i * total + j] = -1e9;
        }
    }
    Tensor::from_vec(m, (seq, total), device)?.to_dtype(dtype)
}

/// Interleaved RoPE with per-row tables `cos`/`sin` `[b, s, d/2]`: candle's `rope_i_slow`, whose
/// tables are shared by all rows, written with the same operations.
fn rope_rows(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, heads, s, d) = x.dims4()?;
    let cos = cos.reshape((b, 1, s, d / 2, 1))?.broadcast_as((b, heads, s, d / 2, 1))?;
    let sin = sin.reshape((b, 1, s, d / 2, 1))?.broadcast_as((b, heads, s, d / 2, 1))?;
    let x = x.reshape((b, heads, s, d / 2, 2))?;
    let x0 = x.narrow(D::Minus1, 0, 1)?;
    let x1 = x.narrow(D::Minus1, 1, 1)?;
    let y0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
    let y1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
    Tensor::cat(&[y0, y1], D::Minus1)?.flatten_from(D::Minus2)
}

/// Grouped-query attention: repeat each kv head `n` times, `[b, kv, t, d]` → `[b, kv*n, t, d]`.
fn repeat_kv(x: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, d) = x.dims4()?;
    x.unsqueeze(2)?.broadcast_as((b, kv, n, t, d))?.reshape((b, kv * n, t, d))
}

/// Inference session over a shared base: KV cache plus the adapter in use. When it follows an
/// [`AdapterSlot`], each `reset()` (the start of a new prompt) picks up the newest published
/// adapter, so a swap never happens in the middle of a generation.
pub struct LlamaSession {
    model: Arc<Llama>,
    adapter: Option<Arc<LoraAdapter>>,
    slot: Option<Arc<AdapterSlot>>,
    version: u64,
    cache: KvCache,
}

impl LlamaSession {
    pub fn new(model: Arc<Llama>, adapter: Option<Arc<LoraAdapter>>) -> Self {
        LlamaSession { model, adapter, slot: None, version: 0, cache: KvCache::default() }
    }

    /// A session that swaps in the slot's newest adapter at every `reset()`.
    pub fn following(model: Arc<Llama>, slot: Arc<AdapterSlot>) -> Self {
        let cur = slot.current();
        LlamaSession {
            model,
            adapter: cur.adapter.clone(),
            slot: Some(slot),
            version: cur.version,
            cache: KvCache::default(),
        }
    }

    /// Replace the adapter (clears the cache, whose keys/values depend on it).
    pub fn set_adapter(&mut self, adapter: Option<Arc<LoraAdapter>>) {
        self.adapter = adapter;
        self.cache = KvCache::default();
    }

    /// Version of the adapter in use (0 = base, or a session not following a slot).
    pub fn adapter_version(&self) -> u64 {
        self.version
    }
}

impl CausalLm for LlamaSession {
    fn forward_last(&mut self, tokens: &[u32], pos: usize) -> Result<Tensor> {
        if tokens.is_empty() {
            bail!("forward_last needs at least one token");
        }
        let ids = Tensor::new(tokens, self.model.device())?.unsqueeze(0)?;
        let h = self.model.run(&ids, pos, Some(&mut self.cache), self.adapter.as_deref(), ForwardOpts::default())?;
        let last = h.narrow(1, tokens.len() - 1, 1)?.squeeze(1)?.squeeze(0)?.detach();
        self.model.logits(&last.unsqueeze(0)?)?.squeeze(0)?.to_dtype(DType::F32)
    }

    fn reset(&mut self) {
        self.cache = KvCache::default();
        if let Some(slot) = &self.slot {
            let cur = slot.current();
            self.adapter = cur.adapter.clone();
            self.version = cur.version;
        }
    }
}
