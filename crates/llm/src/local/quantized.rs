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
use propersim_kernels::attention::attend_group;
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
/// Where every projection has the panel kernel (`QuantMatrix::takes_many_rows`: Q4_1 on an
/// AVX-512 VNNI CPU), prompts take the quantized copy too (`DualModel::quantized_prompts`): its
/// int8 rows beat gemm's f32 ones about threefold, and the dense copy then only serves the
/// tensor path.
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
        self.add_bias(&mut y)?;
        Ok(y)
    }

    /// Add the bias, if any, to each row of `y`.
    fn add_bias(&self, y: &mut [f32]) -> Result<()> {
        if let Some(b) = &self.bias {
            let b = b.to_vec1::<f32>()?;
            for row in y.chunks_exact_mut(b.len()) {
                row.iter_mut().zip(&b).for_each(|(y, b)| *y += b);
            }
        }
        Ok(())
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
    /// Prompt passes take the decode path too: every layer's projections have our panel
    /// kernel, which multiplies many rows faster than gemm on the dense copies (and computes
    /// each row as a decode step does).
    quantized_prompts: bool,
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
        let quantized_prompts = plain.is_some()
            && layers.iter().all(|l| {
                LoraTarget::ALL
                    .iter()
                    .all(|&t| matches!(&l.projection(t).quant, Decode::Ours(q) if q.takes_many_rows()))
            });
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
            quantized_prompts,
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

    /// Projection `t` of layer `li` on the rows `x` (`[rows, in]`): the base weights, plus the
    /// adapter's low-rank correction.
    fn linear(&self, li: usize, t: LoraTarget, x: &Tensor, dense: bool) -> Result<Tensor> {
        if dense && x.dim(0)? == 1 {
            // gemm multiplies a lone row with its matrix-vector kernel, which rounds differently
            // from the rows of a larger product (those come out the same whatever rows are
            // beside them, checked on this model's shapes). A lone row is multiplied as one of
            // two, so that a position's values do not depend on how its prompt was split into
            // passes or what was batched with it.
            return Ok(self.linear(li, t, &Tensor::cat(&[x, x], 0)?, dense)?.narrow(0, 0, 1)?);
        }
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

    /// Attention of every new row of a pass (`q`: `[rows, n_head·head_dim]`, rotated; `rows`:
    /// each row's sequence in `kvs` and position, whose keys and values its cache already
    /// holds). Each (row, key/value head) is computed on its own by the kernel (see
    /// `propersim_kernels::attention`), all of them in one parallel dispatch, a head's rows one
    /// after another so that its keys and values stay in cache.
    fn attend_rows(&self, li: usize, kvs: &[&SeqKv], rows: &[(usize, usize)], q: &[f32]) -> Vec<f32> {
        let (nh, nkv, hd) = (self.n_head, self.n_kv_head, self.head_dim);
        let group = nh / nkv * hd;
        let mut y = vec![0f32; rows.len() * nh * hd];
        let out = y.as_mut_ptr() as usize;
        candle_core::utils::barrier_pool().execute_chunked(rows.len() * nkv, |units| {
            let mut scratch = Vec::new();
            for u in units {
                let (g, r) = (u / rows.len(), u % rows.len());
                let (seq, pos) = rows[r];
                let (keys, values) = kvs[seq].head(li, g);
                let at = r * nh * hd + g * group;
                // SAFETY: unit u (row r, head g) alone writes y[at..at + group], and `y` outlives
                // the dispatch.
                let out = unsafe { std::slice::from_raw_parts_mut((out as *mut f32).add(at), group) };
                let cap = kvs[seq].capacity();
                attend_group(&q[at..at + group], keys, values, cap, pos + 1, hd, out, &mut scratch);
            }
        });
        y
    }

    fn forward_batch(&mut self, items: &mut [(&mut SeqKv, &[u32])], dense: bool) -> Result<Vec<Vec<f32>>> {
        use candle_core::Module;
        // A sequence's result must not depend on what it is batched with, nor on how its prompt
        // was split into passes. Every path here computes each row on its own: the attention
        // kernel takes one (row, head) at a time, the decode weights' kernel one row at a time,
        // and gemm's rows are the same whatever rows are beside them once there are two or more
        // (see `linear`).
        if self.plain.is_some() && (!dense || self.quantized_prompts) {
            return self.decode_step(items);
        }
        let rows = rows_of(items)?;
        let n = rows.len();
        let ids: Vec<u32> = items.iter().flat_map(|(_, t)| t.iter().copied()).collect();
        // Each row's rotary cos/sin rows, shared by every layer.
        let positions: Vec<u32> = rows.iter().map(|&(_, p)| p as u32).collect();
        let positions = Tensor::from_vec(positions, n, &Device::Cpu)?;
        let half = self.cos.dim(1)?;
        let cs = (
            self.cos.index_select(&positions, 0)?.reshape((n, 1, half))?,
            self.sin.index_select(&positions, 0)?.reshape((n, 1, half))?,
        );
        let (nh, nkv, hd) = (self.n_head, self.n_kv_head, self.head_dim);
        let flat = |t: Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        let mut x = self.embed.forward(&Tensor::from_vec(ids, n, &Device::Cpu)?)?; // [n, hidden]
        for li in 0..self.layers.len() {
            let h = self.layers[li].attn_norm.forward(&x)?;
            let q = flat(self.rope_rows(&self.linear(li, LoraTarget::Q, &h, dense)?, nh, &cs)?)?;
            let k = flat(self.rope_rows(&self.linear(li, LoraTarget::K, &h, dense)?, nkv, &cs)?)?;
            let v = flat(self.linear(li, LoraTarget::V, &h, dense)?)?;
            write_kv(items, li, &k, &v)?;
            let kvs: Vec<&SeqKv> = items.iter().map(|(kv, _)| &**kv).collect();
            let y = Tensor::from_vec(self.attend_rows(li, &kvs, &rows, &q), (n, nh * hd), &Device::Cpu)?;
            let x1 = (self.linear(li, LoraTarget::O, &y, dense)? + &x)?;
            let h = self.layers[li].ffn_norm.forward(&x1)?;
            let gate = candle_nn::ops::silu(&self.linear(li, LoraTarget::Gate, &h, dense)?)?;
            let ff = (gate * self.linear(li, LoraTarget::Up, &h, dense)?)?;
            x = (self.linear(li, LoraTarget::Down, &ff, dense)? + x1)?;
        }
        for (kv, t) in items.iter_mut() {
            let len = kv.len() + t.len();
            kv.set_len(len);
        }
        let last: Vec<u32> = last_rows(items).into_iter().map(|r| r as u32).collect();
        let last = x.index_select(&Tensor::new(last.as_slice(), &Device::Cpu)?, 0)?;
        let last = self.norm.forward(&last)?;
        let logits = if dense {
            // One matrix-vector product per prompt, as a prompt computed alone has, so that its
            // logits do not depend on the prompts beside it.
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

/// Each new row of a pass: its sequence (index in `items`) and position, checked against the
/// sequence's capacity. Rows are laid out sequence after sequence.
fn rows_of(items: &[(&mut SeqKv, &[u32])]) -> Result<Vec<(usize, usize)>> {
    let mut rows = Vec::new();
    for (i, (kv, t)) in items.iter().enumerate() {
        if t.is_empty() {
            bail!("every sequence in a batch needs at least one new token");
        }
        let start = kv.len();
        if start + t.len() > kv.capacity() {
            bail!("sequence of {} tokens exceeds its cache of {}", start + t.len(), kv.capacity());
        }
        rows.extend((start..start + t.len()).map(|p| (i, p)));
    }
    Ok(rows)
}

/// The index of each sequence's last row in a pass.
fn last_rows(items: &[(&mut SeqKv, &[u32])]) -> Vec<usize> {
    items
        .iter()
        .scan(0usize, |end, (_, t)| {
            *end += t.len();
            Some(*end - 1)
        })
        .collect()
}

/// Write a layer's new keys and values (`[rows, kv_heads·head_dim]`, rows laid out as
/// [`rows_of`] lays them) into each sequence's cache, after what it holds.
fn write_kv(items: &mut [(&mut SeqKv, &[u32])], li: usize, k: &[f32], v: &[f32]) -> Result<()> {
    let width = k.len() / items.iter().map(|(_, t)| t.len()).sum::<usize>().max(1);
    let mut row = 0;
    for (kv, t) in items.iter_mut() {
        let span = row * width..(row + t.len()) * width;
        let start = kv.len();
        kv.write_rows(li, start, &k[span.clone()], &v[span])?;
        row += t.len();
    }
    Ok(())
}

impl DualModel {
    /// The decode copy of projection `t` of layer `li` on `x` (rows of the layer's input), plus
    /// the adapter's low-rank correction.
    fn decode_linear(&self, li: usize, t: LoraTarget, x: &[f32]) -> Result<Vec<f32>> {
        let mut y = self.layers[li].projection(t).decode_rows(x)?;
        self.add_delta(li, t, x, &mut y)?;
        Ok(y)
    }

    /// [`DualModel::decode_linear`] of several projections of layer `li` on the same rows, in
    /// one parallel dispatch where all of them have our kernel (see
    /// `propersim_kernels::qmatmul::matmul_many`). The same bits as one at a time.
    fn decode_linears<const N: usize>(&self, li: usize, ts: [LoraTarget; N], x: &[f32]) -> Result<[Vec<f32>; N]> {
        let ws = ts.map(|t| self.layers[li].projection(t));
        let ours: Option<Vec<&QuantMatrix>> =
            ws.iter().map(|w| if let Decode::Ours(q) = &w.quant { Some(q) } else { None }).collect();
        let mut ys = match ours {
            Some(qs) => {
                let mut ys: [Vec<f32>; N] = std::array::from_fn(|i| vec![0f32; x.len() / qs[i].cols() * qs[i].rows()]);
                let mut outs: Vec<&mut [f32]> = ys.iter_mut().map(Vec::as_mut_slice).collect();
                propersim_kernels::qmatmul::matmul_many(&qs, x, &mut outs)?;
                for (w, y) in ws.iter().zip(&mut ys) {
                    w.add_bias(y)?;
                }
                ys
            }
            None => {
                let mut ys: [Vec<f32>; N] = std::array::from_fn(|_| Vec::new());
                for (w, y) in ws.iter().zip(&mut ys) {
                    *y = w.decode_rows(x)?;
                }
                ys
            }
        };
        for (t, y) in ts.into_iter().zip(&mut ys) {
            self.add_delta(li, t, x, y)?;
        }
        Ok(ys)
    }

    /// Add the adapter's low-rank correction of projection `t` of layer `li` on `x` to `y`.
    fn add_delta(&self, li: usize, t: LoraTarget, x: &[f32], y: &mut [f32]) -> Result<()> {
        if let Some(a) = &self.lora {
            let cols = self.layers[li].projection(t).dense.weight().dim(1)?;
            let rows = x.len() / cols;
            // A lone row goes through gemm as one of two, as in `linear`: a prompt's rows then
            // get the same correction however its passes are cut (prompt passes take this path
            // too when `quantized_prompts`).
            let xt = Tensor::from_slice(x, (rows, cols), &Device::Cpu)?;
            let xt = if rows == 1 { Tensor::cat(&[&xt, &xt], 0)? } else { xt };
            if let Some(d) = a.delta(li, t, &xt, false)? {
                let d = d.narrow(0, 0, rows)?.flatten_all()?.to_vec1::<f32>()?;
                y.iter_mut().zip(&d).for_each(|(y, d)| *y += d);
            }
        }
        Ok(())
    }

    /// A decode step: the sampled token of each sequence, or the several tokens its grammar
    /// forces. The same maths as the tensor path with the decode weights, written on plain
    /// slices (`propersim_kernels`), so that the step costs its arithmetic rather than ~20
    /// tensor ops a layer. Each row is computed on its own.
    fn decode_step(&self, items: &mut [(&mut SeqKv, &[u32])]) -> Result<Vec<Vec<f32>>> {
        use candle_core::Module;
        use propersim_kernels::decode::{rms_norm, rope, swiglu};
        let plain = self.plain.as_ref().expect("decode_step runs with the plain tables");
        let (nh, nkv, hd) = (self.n_head, self.n_kv_head, self.head_dim);
        let half = hd / 2;
        let rows = rows_of(items)?;
        if let Some(&(_, p)) = rows.iter().find(|&&(_, p)| p >= plain.cos.len() / half) {
            bail!("position {p} is past the model's rotary table");
        }
        let ids: Vec<u32> = items.iter().flat_map(|(_, t)| t.iter().copied()).collect();
        let mut x = self.embed.forward(&Tensor::new(ids.as_slice(), &Device::Cpu)?)?.flatten_all()?.to_vec1::<f32>()?;
        let mut h = vec![0f32; x.len()];
        for li in 0..self.layers.len() {
            rms_norm(&x, &self.layers[li].attn_norm_w, plain.eps, &mut h);
            let [mut q, mut k, v] = self.decode_linears(li, [LoraTarget::Q, LoraTarget::K, LoraTarget::V], &h)?;
            for (r, &(_, p)) in rows.iter().enumerate() {
                let (cos, sin) = (&plain.cos[p * half..(p + 1) * half], &plain.sin[p * half..(p + 1) * half]);
                rope(&mut q[r * nh * hd..(r + 1) * nh * hd], hd, cos, sin, self.neox);
                rope(&mut k[r * nkv * hd..(r + 1) * nkv * hd], hd, cos, sin, self.neox);
            }
            write_kv(items, li, &k, &v)?;
            let kvs: Vec<&SeqKv> = items.iter().map(|(kv, _)| &**kv).collect();
            let y = self.attend_rows(li, &kvs, &rows, &q);
            let o = self.decode_linear(li, LoraTarget::O, &y)?;
            x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
            rms_norm(&x, &self.layers[li].ffn_norm_w, plain.eps, &mut h);
            let [mut gate, up] = self.decode_linears(li, [LoraTarget::Gate, LoraTarget::Up], &h)?;
            swiglu(&mut gate, &up);
            let down = self.decode_linear(li, LoraTarget::Down, &gate)?;
            x.iter_mut().zip(&down).for_each(|(x, d)| *x += d);
        }
        for (kv, t) in items.iter_mut() {
            let len = kv.len() + t.len();
            kv.set_len(len);
        }
        let dim = x.len() / rows.len();
        let last: Vec<f32> = last_rows(items).into_iter().flat_map(|r| x[r * dim..(r + 1) * dim].to_vec()).collect();
        let mut normed = vec![0f32; last.len()];
        rms_norm(&last, &plain.norm_w, plain.eps, &mut normed);
        let logits = self.output.decode_rows(&normed)?;
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

    fn quantized_prompts(&self) -> bool {
        self.model.quantized_prompts
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
