//! [`CausalLm`] over GGUF models: candle's KV-cached `quantized_llama` / `quantized_qwen2` for
//! the single-format load modes, and `DualModel` — the same llama/qwen2 maths written out here
//! so each linear layer can keep an f32 copy for prompt passes and the GGUF's quantized blocks for
//! decode steps (`LoadMode::Dual`, the default for small models; see the `llm::local` docs).
//!
//! All are inference-only (no backward through `QMatMul`, last-position logits); training uses
//! its own differentiable model behind the same trait.

use std::path::Path;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use candle_transformers::models::{quantized_llama, quantized_qwen2};

use std::sync::Arc;

use super::batch::{BatchLm, SeqKv};
use super::engine::EngineModel;
use super::gguf::{self, GgufMeta, LoadMode};
use crate::model::lora::{AdapterSlot, LoraAdapter, LoraTarget};
use crate::model::CausalLm;
use propersim_kernels::qmatmul::{Format, QuantMatrix};

enum Weights {
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
    Dual(DualModel),
}

/// A GGUF model loaded for generation.
pub struct QuantizedLm {
    weights: Weights,
    device: Device,
    mode: LoadMode,
    /// Longest sequence the model's position tables cover.
    max_seq_len: usize,
}

impl QuantizedLm {
    /// Load `path` with its weights converted to `mode`. Returns the model and its metadata.
    pub fn load(path: &Path, mode: LoadMode) -> Result<(QuantizedLm, GgufMeta)> {
        let device = Device::Cpu;
        if mode == LoadMode::Dual {
            let mut p = gguf::prepare(path, LoadMode::Native)?;
            let meta = p.meta.clone();
            if !matches!(meta.architecture.as_str(), "llama" | "qwen2") {
                bail!(
                    "{}: architecture `{}` is not supported by the local provider (supported: llama, qwen2)",
                    path.display(),
                    meta.architecture
                );
            }
            let max_seq_len = meta.context_length.clamp(1, 32_768);
            let m = DualModel::load(&mut p, max_seq_len)?;
            return Ok((QuantizedLm { weights: Weights::Dual(m), device, mode, max_seq_len }, meta));
        }
        let mut p = gguf::prepare(path, mode)?;
        let meta = p.meta.clone();
        let (weights, max_seq_len) = match meta.architecture.as_str() {
            // Llama-family architectures that candle's quantized_llama reads with `llama.*` keys.
            "llama" => (
                Weights::Llama(quantized_llama::ModelWeights::from_gguf(p.content, &mut p.reader, &device)?),
                quantized_llama::MAX_SEQ_LEN.min(meta.context_length.max(1)),
            ),
            "qwen2" => (
                Weights::Qwen2(quantized_qwen2::ModelWeights::from_gguf(p.content, &mut p.reader, &device)?),
                meta.context_length.max(1),
            ),
            other => bail!(
                "{}: architecture `{other}` is not supported by the local provider (supported: llama-family with `llama.*` keys, qwen2)",
                path.display()
            ),
        };
        Ok((QuantizedLm { weights, device, mode, max_seq_len }, meta))
    }

    pub fn mode(&self) -> LoadMode {
        self.mode
    }

    /// Hand the model to the engine: the dual model runs batched (continuous batching, prefix
    /// cache); candle's single-format models run one request at a time.
    pub fn into_engine_model(self) -> EngineModel {
        match self.weights {
            Weights::Dual(model) => EngineModel::Batched(Box::new(DualBatch {
                model,
                max_seq_len: self.max_seq_len,
                slot: None,
                version: 0,
            })),
            weights => EngineModel::Single(Box::new(QuantizedLm { weights, ..self })),
        }
    }

    /// Longest prompt + completion the model can hold.
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }
}

impl CausalLm for QuantizedLm {
    fn forward_last(&mut self, tokens: &[u32], pos: usize) -> candle_core::Result<Tensor> {
        if tokens.is_empty() {
            candle_core::bail!("forward_last needs at least one token");
        }
        if pos + tokens.len() > self.max_seq_len {
            candle_core::bail!(
                "sequence of {} tokens exceeds the model's context of {} tokens",
                pos + tokens.len(),
                self.max_seq_len
            );
        }
        let ids = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let logits = match &mut self.weights {
            Weights::Llama(m) => m.forward(&ids, pos)?,
            Weights::Qwen2(m) => m.forward(&ids, pos)?,
            Weights::Dual(m) => m.forward(&ids, pos)?,
        };
        logits.squeeze(0)?.to_dtype(candle_core::DType::F32)
    }

    fn reset(&mut self) {
        match &mut self.weights {
            Weights::Llama(m) => m.clear_kv_cache(),
            Weights::Qwen2(m) => m.clear_kv_cache(),
            Weights::Dual(m) => m.reset(),
        }
    }
}

/// A linear layer held twice: dense f32 for prompts (gemm is fastest on many rows) and a
/// quantized copy for decode steps (a quarter of the memory traffic or less). See `LoadMode::Dual`.
struct DualLinear {
    dense: candle_nn::Linear,
    quant: Decode,
    bias: Option<Tensor>,
}

/// The decode copy of a layer: the GGUF's Q4_1 or Q8_0 blocks as they are, with our kernel
/// (`propersim_kernels::qmatmul`); else candle's kernel on the GGUF's type where candle has a SIMD one, or
/// a Q8_0 re-quantization.
enum Decode {
    Ours(QuantMatrix),
    Candle(candle_core::quantized::QMatMul),
}

impl DualLinear {
    fn new(
        qt: candle_core::quantized::QTensor,
        dense: Option<Tensor>,
        bias: Option<Tensor>,
    ) -> candle_core::Result<Self> {
        use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
        let dense = match dense {
            Some(d) => d,
            None => qt.dequantize(&Device::Cpu)?,
        };
        let fast = matches!(qt.dtype(), GgmlDType::Q4_0 | GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K);
        let (rows, cols) = dense.dims2()?;
        let ours = |data: Vec<u8>, f: Format| {
            QuantMatrix::new(data, f, rows, cols)
                .map(Decode::Ours)
                .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
        };
        let quant = match qt.dtype() {
            GgmlDType::Q4_1 => ours(qt.data()?.into_owned(), Format::Q4_1)?,
            GgmlDType::Q8_0 => ours(qt.data()?.into_owned(), Format::Q8_0)?,
            _ if fast || cols % 32 != 0 => Decode::Candle(QMatMul::from_qtensor(qt)?),
            _ => ours(QTensor::quantize(&dense, GgmlDType::Q8_0)?.data()?.into_owned(), Format::Q8_0)?,
        };
        Ok(DualLinear { dense: candle_nn::Linear::new(dense, None), quant, bias })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let rows = x.elem_count() / x.dims().last().copied().unwrap_or(1).max(1);
        self.forward_with(x, rows > 1)
    }

    fn forward_with(&self, x: &Tensor, dense: bool) -> candle_core::Result<Tensor> {
        use candle_core::Module;
        if !dense {
            let y = self
                .decode_rows(&x.flatten_all()?.to_vec1::<f32>()?)
                .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
            let mut dims = x.dims().to_vec();
            if let Some(last) = dims.last_mut() {
                *last = self.dense.weight().dim(0)?;
            }
            return Tensor::from_vec(y, dims, x.device());
        }
        let y = self.dense.forward(x)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// The decode copy applied to `x` (rows of the layer's input), bias added.
    fn decode_rows(&self, x: &[f32]) -> Result<Vec<f32>> {
        let mut y = match &self.quant {
            Decode::Ours(q) => {
                let mut out = vec![0f32; x.len() / q.cols() * q.rows()];
                q.matmul(x, &mut out)?;
                out
            }
            Decode::Candle(q) => {
                use candle_core::Module;
                let cols = self.dense.weight().dim(1)?;
                let t = Tensor::from_slice(x, (x.len() / cols, cols), &Device::Cpu)?;
                q.forward(&t)?.flatten_all()?.to_vec1::<f32>()?
            }
        };
        if let Some(b) = &self.bias {
            let b = b.to_vec1::<f32>()?;
            for row in y.chunks_exact_mut(b.len()) {
                row.iter_mut().zip(&b).for_each(|(y, b)| *y += b);
            }
        }
        Ok(y)
    }
}

struct DualLayer {
    attn_norm: candle_transformers::quantized_nn::RmsNorm,
    wq: DualLinear,
    wk: DualLinear,
    wv: DualLinear,
    wo: DualLinear,
    ffn_norm: candle_transformers::quantized_nn::RmsNorm,
    gate: DualLinear,
    up: DualLinear,
    down: DualLinear,
    /// The norms' weights as plain values, for [`DualModel::decode_step`].
    attn_norm_w: Vec<f32>,
    ffn_norm_w: Vec<f32>,
    kv: Option<(Tensor, Tensor)>,
}

impl DualLayer {
    /// The layer's projection `t`.
    fn projection(&self, t: LoraTarget) -> &DualLinear {
        match t {
            LoraTarget::Q => &self.wq,
            LoraTarget::K => &self.wk,
            LoraTarget::V => &self.wv,
            LoraTarget::O => &self.wo,
            LoraTarget::Gate => &self.gate,
            LoraTarget::Up => &self.up,
            LoraTarget::Down => &self.down,
        }
    }
}

struct Plain {
    norm_w: Vec<f32>,
    eps: f32,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// Llama-family / qwen2 forward over GGUF weights with [`DualLinear`] layers. Same maths as
/// candle's `quantized_llama`/`quantized_qwen2` (the test suite checks they agree).
pub(crate) struct DualModel {
    embed: candle_nn::Embedding,
    layers: Vec<DualLayer>,
    norm: candle_transformers::quantized_nn::RmsNorm,
    output: DualLinear,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    neox: bool,
    cos: Tensor,
    sin: Tensor,
    /// What [`DualModel::decode_step`] reads: the final norm's weights, the norms' epsilon, and
    /// the rotary tables as plain values (`[max_seq_len, head_dim / 2]`); `None` when the rotary
    /// dimension is not the whole head, which only the tensor path handles.
    plain: Option<Plain>,
    /// The LoRA adapter applied on top of the base weights (a trained assistant), CPU f32.
    lora: Option<Arc<LoraAdapter>>,
}

impl DualModel {
    fn load(p: &mut gguf::Prepared, max_seq_len: usize) -> Result<DualModel> {
        use candle_transformers::quantized_nn::RmsNorm;
        let dev = Device::Cpu;
        let meta = &p.meta;
        let arch = meta.architecture.clone();
        let (ct, r) = (&p.content, &mut p.reader);
        let mut get = |name: &str| ct.tensor(r, name, &dev);
        let has = |name: &str| ct.tensor_infos.contains_key(name);
        let eps = meta.rms_norm_eps;
        let head_dim = meta.embedding_length / meta.head_count;
        let rope_dim = meta.get_u64(&format!("{arch}.rope.dimension_count")).map(|d| d as usize).unwrap_or(head_dim);
        let emb_q = get("token_embd.weight")?;
        let emb = emb_q.dequantize(&dev)?;
        let mut layers = Vec::with_capacity(meta.block_count);
        for i in 0..meta.block_count {
            let n = |s: &str| format!("blk.{i}.{s}");
            let mut lin = |s: &str| -> Result<DualLinear> {
                let bias_name = n(&format!("{s}.bias"));
                let bias = if has(&bias_name) { Some(get(&bias_name)?.dequantize(&dev)?) } else { None };
                Ok(DualLinear::new(get(&n(&format!("{s}.weight")))?, None, bias)?)
            };
            let (wq, wk, wv, wo) = (lin("attn_q")?, lin("attn_k")?, lin("attn_v")?, lin("attn_output")?);
            let (gate, up, down) = (lin("ffn_gate")?, lin("ffn_up")?, lin("ffn_down")?);
            let mut norm = |s: &str| -> Result<(RmsNorm, Vec<f32>)> {
                let w = get(&n(s))?;
                let plain = w.dequantize(&dev)?.to_vec1::<f32>()?;
                Ok((RmsNorm::from_qtensor(w, eps)?, plain))
            };
            let (attn_norm, attn_norm_w) = norm("attn_norm.weight")?;
            let (ffn_norm, ffn_norm_w) = norm("ffn_norm.weight")?;
            layers.push(DualLayer {
                attn_norm,
                ffn_norm,
                attn_norm_w,
                ffn_norm_w,
                wq,
                wk,
                wv,
                wo,
                gate,
                up,
                down,
                kv: None,
            });
        }
        let norm_q = get("output_norm.weight")?;
        let norm_w = norm_q.dequantize(&dev)?.to_vec1::<f32>()?;
        let norm = RmsNorm::from_qtensor(norm_q, eps)?;
        let output = if has("output.weight") {
            DualLinear::new(get("output.weight")?, None, None)?
        } else {
            // Tied embeddings: share the dense tensor with the embedding table.
            DualLinear::new(emb_q, Some(emb.clone()), None)?
        };
        let theta: Vec<f32> =
            (0..rope_dim).step_by(2).map(|i| 1f32 / meta.rope_freq_base.powf(i as f32 / rope_dim as f32)).collect();
        let theta = Tensor::new(theta.as_slice(), &dev)?;
        let pos = Tensor::arange(0, max_seq_len as u32, &dev)?
            .to_dtype(candle_core::DType::F32)?
            .reshape((max_seq_len, 1))?;
        let freqs = pos.matmul(&theta.reshape((1, theta.elem_count()))?)?;
        let (cos, sin) = (freqs.cos()?, freqs.sin()?);
        let plain = if rope_dim == head_dim {
            let flat = |t: &Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f32>());
            Some(Plain { norm_w, eps: eps as f32, cos: flat(&cos)?, sin: flat(&sin)? })
        } else {
            None
        };
        Ok(DualModel {
            embed: candle_nn::Embedding::new(emb, meta.embedding_length),
            layers,
            norm,
            output,
            n_head: meta.head_count,
            n_kv_head: meta.head_count_kv,
            head_dim,
            neox: arch != "llama",
            cos,
            sin,
            plain,
            lora: None,
        })
    }

    fn rope(&self, x: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        let (_, _, s, _) = x.dims4()?;
        let cos = self.cos.narrow(0, pos, s)?;
        let sin = self.sin.narrow(0, pos, s)?;
        let x = x.contiguous()?;
        if self.neox {
            candle_nn::rotary_emb::rope(&x, &cos, &sin)
        } else {
            candle_nn::rotary_emb::rope_i(&x, &cos, &sin)
        }
    }

    fn forward(&mut self, ids: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        use candle_core::{IndexOp, Module};
        let (b, s) = ids.dims2()?;
        let dev = ids.device().clone();
        let mask = if s > 1 {
            Some(candle_transformers::utils::build_additive_causal_mask(s, pos, None, &dev, candle_core::DType::F32)?)
        } else {
            None
        };
        let (nh, nkv, hd) = (self.n_head, self.n_kv_head, self.head_dim);
        let mut x = self.embed.forward(ids)?;
        for li in 0..self.layers.len() {
            let h = self.layers[li].attn_norm.forward(&x)?;
            let l = &self.layers[li];
            let q = l.wq.forward(&h)?.reshape((b, s, nh, hd))?.transpose(1, 2)?;
            let k = l.wk.forward(&h)?.reshape((b, s, nkv, hd))?.transpose(1, 2)?;
            let v = l.wv.forward(&h)?.reshape((b, s, nkv, hd))?.transpose(1, 2)?.contiguous()?;
            let q = self.rope(&q, pos)?;
            let k = self.rope(&k, pos)?;
            let (k, v) = match (&self.layers[li].kv, pos) {
                (Some((kc, vc)), p) if p > 0 => (Tensor::cat(&[kc, &k], 2)?, Tensor::cat(&[vc, &v], 2)?),
                _ => (k, v),
            };
            self.layers[li].kv = Some((k.clone(), v.clone()));
            let l = &self.layers[li];
            let k = candle_transformers::utils::repeat_kv(k, nh / nkv)?;
            let v = candle_transformers::utils::repeat_kv(v, nh / nkv)?;
            let att = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
            let att = match &mask {
                Some(m) => att.broadcast_add(m)?,
                None => att,
            };
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let y = att.matmul(&v.contiguous()?)?.transpose(1, 2)?.reshape((b, s, nh * hd))?;
            let x1 = (l.wo.forward(&y)? + &x)?;
            let h = l.ffn_norm.forward(&x1)?;
            let ff = (candle_nn::ops::silu(&l.gate.forward(&h)?)? * l.up.forward(&h)?)?;
            x = (l.down.forward(&ff)? + x1)?;
        }
        let x = self.norm.forward(&x)?;
        let last = x.i((.., s - 1, ..))?.contiguous()?;
        // After a prompt, the lm_head runs dense too: one matvec per prompt, and the prompt's
        // next-token logits are then exactly those of the f32 model.
        self.output.forward_with(&last, s > 1)
    }

    fn reset(&mut self) {
        self.layers.iter_mut().for_each(|l| l.kv = None);
    }

    /// Projection `t` of layer `li`: the base weights, plus the adapter's low-rank correction.
    fn linear(&self, li: usize, t: LoraTarget, x: &Tensor, dense: bool) -> Result<Tensor> {
        let w = self.layers[li].projection(t);
        let y = w.forward_with(x, dense)?;
        match self.lora.as_ref().map(|a| a.delta(li, t, x, false)).transpose()?.flatten() {
            Some(d) => Ok((y + d)?),
            None => Ok(y),
        }
    }

    /// Rotary embedding of `x` (`[rows, heads*head_dim]`), each row at its own position (its
    /// cos/sin rows in `cs`, `[rows, 1, rope_dim/2]`): one kernel call for every sequence.
    fn rope_rows(&self, x: &Tensor, heads: usize, cs: &(Tensor, Tensor)) -> candle_core::Result<Tensor> {
        let rows = x.dim(0)?;
        let x = x.reshape((rows, heads, 1, self.head_dim))?.contiguous()?;
        if self.neox {
            candle_nn::rotary_emb::rope(&x, &cs.0, &cs.1)
        } else {
            candle_nn::rotary_emb::rope_i(&x, &cs.0, &cs.1)
        }
    }

    /// Attention of one sequence's new rows (`q`: `[t, heads, 1, head_dim]`, `k`:
    /// `[t, kv_heads, 1, head_dim]`, both rotated; `v`: `[t, kv_heads*head_dim]`) at positions
    /// `pos..pos+t`, against its cache, which they join. The query heads that share a key/value
    /// head are stacked as rows of one matmul, so the cache is never repeated per head.
    fn attend(&self, kv: &SeqKv, li: usize, pos: usize, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (nh, nkv, hd) = (self.n_head, self.n_kv_head, self.head_dim);
        let t = q.dim(0)?;
        let rep = nh / nkv;
        let (q, k, v) = if t == 1 {
            // One row: the head-major layouts are views of the row-major ones.
            (q.reshape((nkv, rep, hd))?, k.reshape((nkv, 1, hd))?, v.reshape((nkv, 1, hd))?)
        } else {
            (
                q.reshape((t, nh, hd))?.transpose(0, 1)?.contiguous()?.reshape((nkv, rep * t, hd))?,
                k.reshape((t, nkv, hd))?.transpose(0, 1)?.contiguous()?,
                v.reshape((t, nkv, hd))?.transpose(0, 1)?.contiguous()?,
            )
        };
        kv.write(li, pos, &k, &v)?;
        let (kc, vc) = kv.view(li, pos + t)?;
        let att = q.matmul(&kc.t()?)?.affine(1.0 / (hd as f64).sqrt(), 0.0)?;
        let att = if t > 1 {
            // Row r of a group is query position pos + r % t; it sees keys 0..=pos + r % t.
            let total = pos + t;
            let mask: Vec<f32> = (0..rep * t)
                .flat_map(|r| (0..total).map(move |j| if j > pos + r % t { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            att.broadcast_add(&Tensor::from_vec(mask, (rep * t, total), &Device::Cpu)?)?
        } else {
            att
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&vc)?; // [nkv, rep*t, hd]
        if t == 1 {
            return Ok(y.reshape((1, nh * hd))?);
        }
        Ok(y.reshape((nh, t, hd))?.transpose(0, 1)?.reshape((t, nh * hd))?)
    }

    fn forward_batch(&mut self, items: &mut [(&mut SeqKv, &[u32])], dense: bool) -> Result<Vec<Vec<f32>>> {
        use candle_core::Module;
        if !dense && self.plain.is_some() && items.iter().all(|(_, t)| t.len() == 1) {
            return self.decode_step(items);
        }
        if items.iter().any(|(_, t)| t.is_empty()) {
            bail!("every sequence in a batch needs at least one new token");
        }
        // A sequence's result must not depend on what it is batched with, so inputs that take
        // different paths are computed apart. In a prompt pass gemm multiplies a lone row with
        // its matrix-vector kernel, which rounds differently from the rows of a larger product
        // (whose rows come out the same whatever rows are beside them, checked on this model's
        // shapes): a one-token slice runs alone, as it would if it came alone. In a decode step
        // the one-token rows take the plain decode path and a sequence fed several tokens (the
        // ones its grammar forces) the tensor path, whose attention rounds differently: before,
        // one such sequence sent all the others down the tensor path too.
        let single = |t: &[u32]| t.len() == 1;
        let mixed = items.iter().any(|(_, t)| single(t)) && items.iter().any(|(_, t)| !single(t));
        if items.len() > 1 && ((dense && items.iter().any(|(_, t)| single(t))) || (!dense && mixed)) {
            let mut logits = vec![Vec::new(); items.len()];
            let (ones, rest): (Vec<usize>, Vec<usize>) = (0..items.len()).partition(|&i| single(items[i].1));
            let groups: Vec<Vec<usize>> =
                if dense { ones.into_iter().map(|i| vec![i]).chain([rest]).collect() } else { vec![ones, rest] };
            let mut parts: Vec<Option<&mut (&mut SeqKv, &[u32])>> = items.iter_mut().map(Some).collect();
            for idx in groups.into_iter().filter(|g| !g.is_empty()) {
                let mut group: Vec<(&mut SeqKv, &[u32])> = idx
                    .iter()
                    .map(|&i| parts[i].take().map(|(kv, t)| (&mut **kv, *t)).expect("each item once"))
                    .collect();
                for (i, l) in idx.into_iter().zip(self.forward_batch(&mut group, dense)?) {
                    logits[i] = l;
                }
            }
            return Ok(logits);
        }
        let ids: Vec<u32> = items.iter().flat_map(|(_, t)| t.iter().copied()).collect();
        let lens: Vec<usize> = items.iter().map(|(_, t)| t.len()).collect();
        let starts: Vec<usize> = items.iter().map(|(kv, _)| kv.len()).collect();
        for ((kv, t), &start) in items.iter().zip(&starts) {
            if start + t.len() > kv.capacity() {
                bail!("sequence of {} tokens exceeds its cache of {}", start + t.len(), kv.capacity());
            }
        }
        let n = ids.len();
        // Each row's position, and its rotary cos/sin rows, shared by every layer.
        let positions: Vec<u32> = starts.iter().zip(&lens).flat_map(|(&s, &t)| (s..s + t).map(|p| p as u32)).collect();
        let positions = Tensor::from_vec(positions, n, &Device::Cpu)?;
        let half = self.cos.dim(1)?;
        let cs = (
            self.cos.index_select(&positions, 0)?.reshape((n, 1, half))?,
            self.sin.index_select(&positions, 0)?.reshape((n, 1, half))?,
        );
        let (nh, nkv) = (self.n_head, self.n_kv_head);
        let mut x = self.embed.forward(&Tensor::from_vec(ids, n, &Device::Cpu)?)?; // [n, hidden]
        for li in 0..self.layers.len() {
            let h = self.layers[li].attn_norm.forward(&x)?;
            let q = self.rope_rows(&self.linear(li, LoraTarget::Q, &h, dense)?, nh, &cs)?;
            let k = self.rope_rows(&self.linear(li, LoraTarget::K, &h, dense)?, nkv, &cs)?;
            let v = self.linear(li, LoraTarget::V, &h, dense)?;
            let mut ys = Vec::with_capacity(items.len());
            let mut row = 0;
            for (i, (kv, _)) in items.iter().enumerate() {
                let t = lens[i];
                ys.push(self.attend(
                    kv,
                    li,
                    starts[i],
                    &q.narrow(0, row, t)?,
                    &k.narrow(0, row, t)?,
                    &v.narrow(0, row, t)?,
                )?);
                row += t;
            }
            let y = if ys.len() == 1 { ys.pop().expect("one") } else { Tensor::cat(&ys, 0)? };
            let x1 = (self.linear(li, LoraTarget::O, &y, dense)? + &x)?;
            let h = self.layers[li].ffn_norm.forward(&x1)?;
            let gate = candle_nn::ops::silu(&self.linear(li, LoraTarget::Gate, &h, dense)?)?;
            let ff = (gate * self.linear(li, LoraTarget::Up, &h, dense)?)?;
            x = (self.linear(li, LoraTarget::Down, &ff, dense)? + x1)?;
        }
        for (i, (kv, _)) in items.iter_mut().enumerate() {
            kv.set_len(starts[i] + lens[i]);
        }
        let last: Vec<u32> = lens
            .iter()
            .scan(0usize, |end, &t| {
                *end += t;
                Some((*end - 1) as u32)
            })
            .collect();
        let last = x.index_select(&Tensor::new(last.as_slice(), &Device::Cpu)?, 0)?;
        let last = self.norm.forward(&last)?;
        let logits = if dense {
            // One matrix-vector product per prompt, as a prompt computed alone has, so that its
            // logits do not depend on the prompts beside it (see above).
            let rows: Vec<Tensor> = (0..items.len())
                .map(|i| self.output.forward_with(&last.narrow(0, i, 1)?, dense))
                .collect::<candle_core::Result<_>>()?;
            Tensor::cat(&rows, 0)?
        } else {
            self.output.forward_with(&last, dense)?
        };
        Ok(logits.to_dtype(candle_core::DType::F32)?.to_vec2()?)
    }
}

impl DualModel {
    /// The decode copy of projection `t` of layer `li` on `x` (rows of the layer's input), plus
    /// the adapter's low-rank correction.
    fn decode_linear(&self, li: usize, t: LoraTarget, x: &[f32]) -> Result<Vec<f32>> {
        let w = self.layers[li].projection(t);
        let mut y = w.decode_rows(x)?;
        if let Some(a) = &self.lora {
            let cols = w.dense.weight().dim(1)?;
            let xt = Tensor::from_slice(x, (x.len() / cols, cols), &Device::Cpu)?;
            if let Some(d) = a.delta(li, t, &xt, false)? {
                let d = d.flatten_all()?.to_vec1::<f32>()?;
                y.iter_mut().zip(&d).for_each(|(y, d)| *y += d);
            }
        }
        Ok(y)
    }

    /// One new token for each sequence: the same maths as the tensor path with the decode
    /// weights, written on plain slices (`propersim_kernels::decode`), so that the step costs its
    /// arithmetic rather than ~20 tensor ops a layer. Each row is computed on its own.
    fn decode_step(&mut self, items: &mut [(&mut SeqKv, &[u32])]) -> Result<Vec<Vec<f32>>> {
        use candle_core::Module;
        use propersim_kernels::decode::{attend_head, rms_norm, rope, swiglu};
        let plain = self.plain.as_ref().expect("decode_step runs with the plain tables");
        let (nh, nkv, hd) = (self.n_head, self.n_kv_head, self.head_dim);
        let half = hd / 2;
        let positions: Vec<usize> = items.iter().map(|(kv, _)| kv.len()).collect();
        for ((kv, _), &p) in items.iter().zip(&positions) {
            if p + 1 > kv.capacity() || p >= plain.cos.len() / half {
                bail!("sequence of {} tokens exceeds its cache of {}", p + 1, kv.capacity());
            }
        }
        let ids: Vec<u32> = items.iter().map(|(_, t)| t[0]).collect();
        let mut x = self.embed.forward(&Tensor::new(ids.as_slice(), &Device::Cpu)?)?.flatten_all()?.to_vec1::<f32>()?;
        let mut h = vec![0f32; x.len()];
        let mut y = vec![0f32; items.len() * nh * hd];
        for li in 0..self.layers.len() {
            rms_norm(&x, &self.layers[li].attn_norm_w, plain.eps, &mut h);
            let mut q = self.decode_linear(li, LoraTarget::Q, &h)?;
            let mut k = self.decode_linear(li, LoraTarget::K, &h)?;
            let v = self.decode_linear(li, LoraTarget::V, &h)?;
            for (r, (kv, _)) in items.iter().enumerate() {
                let p = positions[r];
                let (cos, sin) = (&plain.cos[p * half..(p + 1) * half], &plain.sin[p * half..(p + 1) * half]);
                let qr = &mut q[r * nh * hd..(r + 1) * nh * hd];
                rope(qr, hd, cos, sin, self.neox);
                let kr = &mut k[r * nkv * hd..(r + 1) * nkv * hd];
                rope(kr, hd, cos, sin, self.neox);
                kv.write_row(li, p, kr, &v[r * nkv * hd..(r + 1) * nkv * hd])?;
                // The row's heads, split between the threads (each head writes its own part of
                // `y`, in the same order whatever the split).
                let (qr, out) = (&*qr, y[r * nh * hd..(r + 1) * nh * hd].as_mut_ptr() as usize);
                kv.with_layer(li, |keys, values, cap| {
                    candle_core::utils::barrier_pool().execute_chunked(nh, |range| {
                        let mut scores = Vec::with_capacity(p + 1);
                        for h in range {
                            let g = h / (nh / nkv);
                            let (keys, values) = (&keys[g * cap * hd..], &values[g * cap * hd..]);
                            // SAFETY: head h alone writes y[r][h·hd..(h+1)·hd].
                            let out = unsafe { std::slice::from_raw_parts_mut((out as *mut f32).add(h * hd), hd) };
                            attend_head(&qr[h * hd..(h + 1) * hd], keys, values, p + 1, out, &mut scores);
                        }
                    })
                })?;
            }
            let o = self.decode_linear(li, LoraTarget::O, &y)?;
            x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
            rms_norm(&x, &self.layers[li].ffn_norm_w, plain.eps, &mut h);
            let mut gate = self.decode_linear(li, LoraTarget::Gate, &h)?;
            let up = self.decode_linear(li, LoraTarget::Up, &h)?;
            swiglu(&mut gate, &up);
            let down = self.decode_linear(li, LoraTarget::Down, &gate)?;
            x.iter_mut().zip(&down).for_each(|(x, d)| *x += d);
        }
        for ((kv, _), &p) in items.iter_mut().zip(&positions) {
            kv.set_len(p + 1);
        }
        rms_norm(&x, &plain.norm_w, plain.eps, &mut h);
        let logits = self.output.decode_rows(&h)?;
        let vocab = logits.len() / items.len();
        Ok(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }
}

/// The dual model as the batched engine drives it.
pub(crate) struct DualBatch {
    model: DualModel,
    max_seq_len: usize,
    /// Where a trained assistant's adapters are published, and the version applied now.
    slot: Option<Arc<AdapterSlot>>,
    version: u64,
}

impl BatchLm for DualBatch {
    fn new_seq(&self, capacity: usize) -> Result<SeqKv> {
        let m = &self.model;
        SeqKv::new(m.layers.len(), m.n_kv_head, m.head_dim, capacity.min(self.max_seq_len))
    }

    fn forward_batch(&mut self, items: &mut [(&mut SeqKv, &[u32])], dense: bool) -> Result<Vec<Vec<f32>>> {
        self.model.forward_batch(items, dense)
    }

    fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    fn follow_adapters(&mut self, slot: Arc<AdapterSlot>) -> Result<()> {
        self.slot = Some(slot);
        // Nothing adopted yet: the next request adopts the slot's current adapter.
        self.version = u64::MAX;
        Ok(())
    }

    fn adapter_pending(&self) -> bool {
        self.slot.as_ref().is_some_and(|s| s.version() != self.version)
    }

    fn adopt_adapter(&mut self) -> Result<u64> {
        let Some(slot) = &self.slot else { return Ok(self.version) };
        let cur = slot.current();
        self.model.lora = cur.adapter.as_ref().map(|a| a.to_cpu_f32().map(Arc::new)).transpose()?;
        self.version = cur.version;
        Ok(cur.version)
    }
}
