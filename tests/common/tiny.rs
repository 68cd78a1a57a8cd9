//! A tiny random llama and a byte-level chat format, for exact checks of the training stack
//! without a real model.

use std::collections::HashMap;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};

use propersim::llm::Message;
use propersim::model::llama::{Llama, LlamaConfig};
use propersim::model::lora::{LoraAdapter, LoraConfig, LoraTarget};
use propersim::train::data::{ChatFormatter, PreferencePair};
use propersim::train::mmlu::TextCodec;

pub fn tiny_cfg() -> LlamaConfig {
    LlamaConfig {
        vocab: 128,
        hidden: 32,
        intermediate: 48,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 8,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
    }
}

pub fn rand_tensor(rng: &mut rand_chacha::ChaCha8Rng, shape: &[usize], std: f64, mean: f64, dt: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| mean + std * (rng.gen::<f64>() * 2.0 - 1.0) * 1.7320508).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap().to_dtype(dt).unwrap()
}

/// Random weights under GGUF names on the CPU; `tied` leaves out `output.weight`.
pub fn tiny_llama(dt: DType, seed: u64, tied: bool) -> Llama {
    tiny_llama_on(dt, seed, tied, &Device::Cpu)
}

/// [`tiny_llama`] on `device`: the same weights (drawn on the CPU, then moved).
pub fn tiny_llama_on(dt: DType, seed: u64, tied: bool, device: &Device) -> Llama {
    let c = tiny_cfg();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut t = HashMap::new();
    let (h, i, q, kv) = (c.hidden, c.intermediate, c.heads * c.head_dim, c.kv_heads * c.head_dim);
    t.insert("token_embd.weight".to_string(), rand_tensor(&mut rng, &[c.vocab, h], 0.5, 0.0, dt));
    for l in 0..c.layers {
        let p = format!("blk.{l}.");
        t.insert(format!("{p}attn_norm.weight"), rand_tensor(&mut rng, &[h], 0.1, 1.0, dt));
        t.insert(format!("{p}attn_q.weight"), rand_tensor(&mut rng, &[q, h], 0.3, 0.0, dt));
        t.insert(format!("{p}attn_k.weight"), rand_tensor(&mut rng, &[kv, h], 0.3, 0.0, dt));
        t.insert(format!("{p}attn_v.weight"), rand_tensor(&mut rng, &[kv, h], 0.3, 0.0, dt));
        t.insert(format!("{p}attn_output.weight"), rand_tensor(&mut rng, &[h, q], 0.2, 0.0, dt));
        t.insert(format!("{p}ffn_norm.weight"), rand_tensor(&mut rng, &[h], 0.1, 1.0, dt));
        t.insert(format!("{p}ffn_gate.weight"), rand_tensor(&mut rng, &[i, h], 0.2, 0.0, dt));
        t.insert(format!("{p}ffn_up.weight"), rand_tensor(&mut rng, &[i, h], 0.2, 0.0, dt));
        t.insert(format!("{p}ffn_down.weight"), rand_tensor(&mut rng, &[h, i], 0.2, 0.0, dt));
    }
    t.insert("output_norm.weight".to_string(), rand_tensor(&mut rng, &[h], 0.1, 1.0, dt));
    if !tied {
        t.insert("output.weight".to_string(), rand_tensor(&mut rng, &[c.vocab, h], 0.5, 0.0, dt));
    }
    let t = t.into_iter().map(|(k, v)| (k, v.to_device(device).unwrap())).collect();
    Llama::from_tensors(c, t).unwrap()
}

pub fn small_lora() -> LoraConfig {
    LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, targets: LoraTarget::ALL.to_vec() }
}

/// Give every B a random value so the adapter changes the model (and A gets gradients).
pub fn randomize_b(ad: &LoraAdapter, seed: u64, std: f64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for l in 0..ad.num_layers() {
        for t in LoraTarget::ALL {
            if let Some(p) = ad.pair(l, t) {
                let b = p.b.as_tensor();
                p.b.set(&rand_tensor(&mut rng, b.dims(), std, 0.0, b.dtype())).unwrap();
            }
        }
    }
}

/// ChatML-like rendering over bytes (all < 128), one token per byte.
pub struct ByteChat;
impl ChatFormatter for ByteChat {
    fn render(&self, msgs: &[Message], gen: bool) -> Result<String> {
        let mut s = String::new();
        for m in msgs {
            s += &format!("\u{1}{}\n{}\u{2}\n", m.role, m.content);
        }
        if gen {
            s += "\u{1}assistant\n";
        }
        Ok(s)
    }
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        anyhow::ensure!(text.is_ascii(), "ByteChat only handles ASCII");
        Ok(text.bytes().map(|b| b as u32).collect())
    }
}

impl TextCodec for ByteChat {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        ChatFormatter::encode(self, text)
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(ids.iter().map(|&i| (i as u8) as char).collect())
    }
}

pub fn pair(prompt: &str, chosen: &str, rejected: &str) -> PreferencePair {
    PreferencePair {
        prompt: vec![Message::system("be brief"), Message::user(prompt)],
        chosen: vec![Message::assistant(chosen)],
        rejected: vec![Message::assistant(rejected)],
        extra: Default::default(),
    }
}

/// Separable toy preferences: the chosen answer always starts with "yes", the rejected with "no".
pub fn toy_pairs() -> Vec<PreferencePair> {
    ["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op"]
        .iter()
        .enumerate()
        .map(|(i, p)| pair(p, &format!("yes {i}"), &format!("no {i}")))
        .collect()
}

/// Every LoRA gradient of `grads`, flattened in the adapter's variable order.
pub fn lora_grads(ad: &LoraAdapter, grads: &candle_core::backprop::GradStore) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for v in ad.vars() {
        let g = grads.get(v.as_tensor()).expect("every LoRA variable gets a gradient");
        out.extend(g.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?);
    }
    Ok(out)
}

/// The cosine of two gradient (or any) vectors.
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}
