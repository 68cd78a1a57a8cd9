//! [`CausalLm`] over candle's KV-cached GGUF models (`quantized_llama`, `quantized_qwen2`).
//!
//! These are inference-only (no backward through `QMatMul`, last-position logits); training uses
//! its own differentiable model behind the same trait.

use std::path::Path;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use candle_transformers::models::{quantized_llama, quantized_qwen2};

use super::gguf::{self, GgufMeta, LoadMode};
use crate::model::CausalLm;

enum Weights {
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
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
        let mut p = gguf::prepare(path, mode)?;
        let device = Device::Cpu;
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
        };
        logits.squeeze(0)?.to_dtype(candle_core::DType::F32)
    }

    fn reset(&mut self) {
        match &mut self.weights {
            Weights::Llama(m) => m.clear_kv_cache(),
            Weights::Qwen2(m) => m.clear_kv_cache(),
        }
    }
}
