//! The shape of a llama-family model: its hyper-parameters and the projections LoRA can wrap.
//! Both the model and its adapters are built from these, so they sit below both.

use std::collections::HashMap;

use candle_core::quantized::gguf_file;
use candle_core::{bail, Result};
use serde::{Deserialize, Serialize};

/// Shape hyper-parameters of a llama-family model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rms_eps: f64,
}

impl LlamaConfig {
    /// Read the `llama.*` keys of a GGUF file's metadata. The vocabulary size comes from
    /// `llama.vocab_size` or, when absent (SmolLM2), from the tokenizer's token list.
    pub fn from_gguf_metadata(md: &HashMap<String, gguf_file::Value>) -> Result<Self> {
        let arch = match md.get("general.architecture") {
            Some(v) => v.to_string()?.clone(),
            None => "llama".to_string(),
        };
        if arch != "llama" {
            bail!("unsupported GGUF architecture {arch:?}: this trainable forward handles llama-family models (interleaved RoPE) only");
        }
        let get_u = |k: &str| -> Result<usize> {
            match md.get(k) {
                Some(v) => Ok(v.to_u32()? as usize),
                None => bail!("GGUF metadata lacks {k}"),
            }
        };
        let hidden = get_u("llama.embedding_length")?;
        let heads = get_u("llama.attention.head_count")?;
        let kv_heads = get_u("llama.attention.head_count_kv").unwrap_or(heads);
        let head_dim = match md.get("llama.attention.key_length") {
            Some(v) => v.to_u32()? as usize,
            None => hidden / heads.max(1),
        };
        let vocab = match md.get("llama.vocab_size") {
            Some(v) => v.to_u32()? as usize,
            None => match md.get("tokenizer.ggml.tokens") {
                Some(v) => v.to_vec()?.len(),
                None => bail!("GGUF metadata lacks llama.vocab_size and tokenizer.ggml.tokens"),
            },
        };
        let rope_theta = match md.get("llama.rope.freq_base") {
            Some(v) => v.to_f32()? as f64,
            None => 10_000.0,
        };
        let rms_eps = match md.get("llama.attention.layer_norm_rms_epsilon") {
            Some(v) => v.to_f32()? as f64,
            None => 1e-5,
        };
        Ok(LlamaConfig {
            vocab,
            hidden,
            intermediate: get_u("llama.feed_forward_length")?,
            layers: get_u("llama.block_count")?,
            heads,
            kv_heads,
            head_dim,
            rope_theta,
            rms_eps,
        })
    }

    /// `(in, out)` features of one projection, as PEFT sees them.
    pub fn proj_dims(&self, t: LoraTarget) -> (usize, usize) {
        let q = self.heads * self.head_dim;
        let kv = self.kv_heads * self.head_dim;
        match t {
            LoraTarget::Q => (self.hidden, q),
            LoraTarget::K | LoraTarget::V => (self.hidden, kv),
            LoraTarget::O => (q, self.hidden),
            LoraTarget::Gate | LoraTarget::Up => (self.hidden, self.intermediate),
            LoraTarget::Down => (self.intermediate, self.hidden),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.heads == 0 || self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            bail!("heads ({}) must be a positive multiple of kv_heads ({})", self.heads, self.kv_heads);
        }
        if !self.head_dim.is_multiple_of(2) {
            bail!("head_dim {} must be even for RoPE", self.head_dim);
        }
        Ok(())
    }
}

/// A projection LoRA can wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LoraTarget {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LoraTarget {
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::O,
        LoraTarget::Gate,
        LoraTarget::Up,
        LoraTarget::Down,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// PEFT's `target_modules` name (`q_proj`, ...).
    pub fn peft_name(self) -> &'static str {
        match self {
            LoraTarget::Q => "q_proj",
            LoraTarget::K => "k_proj",
            LoraTarget::V => "v_proj",
            LoraTarget::O => "o_proj",
            LoraTarget::Gate => "gate_proj",
            LoraTarget::Up => "up_proj",
            LoraTarget::Down => "down_proj",
        }
    }

    /// The HF module path below `model.layers.N.` (`self_attn.q_proj`, `mlp.gate_proj`, ...).
    pub fn peft_module(self) -> &'static str {
        match self {
            LoraTarget::Q => "self_attn.q_proj",
            LoraTarget::K => "self_attn.k_proj",
            LoraTarget::V => "self_attn.v_proj",
            LoraTarget::O => "self_attn.o_proj",
            LoraTarget::Gate => "mlp.gate_proj",
            LoraTarget::Up => "mlp.up_proj",
            LoraTarget::Down => "mlp.down_proj",
        }
    }

    pub fn from_peft_name(s: &str) -> Option<Self> {
        LoraTarget::ALL.into_iter().find(|t| t.peft_name() == s)
    }
}
