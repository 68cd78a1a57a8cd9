//! Adapter files in the Hugging Face PEFT layout, so PEFT and vLLM can load what we train:
//! `adapter_model.safetensors` with tensors
//! `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` (`[r, in]`) and `...lora_B.weight`
//! (`[out, r]`), f32, and an `adapter_config.json` like PEFT writes.
//!
//! One subtlety: our base uses GGUF weights, whose q/k rows are permuted for interleaved RoPE.
//! PEFT applies the adapter to HF weights, so the rows of q/k `lora_B` are un-permuted on save
//! and permuted back on load (A's input side is the hidden state, which is not permuted).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use serde_json::json;

use crate::model::llama::LlamaConfig;
use crate::model::lora::{LoraAdapter, LoraConfig, LoraPair, LoraTarget};
use crate::storage::{write_atomic, write_json_py};

pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
pub const CONFIG_FILE: &str = "adapter_config.json";

/// PEFT tensor name of one factor (`"A"` or `"B"`).
pub fn peft_tensor_name(layer: usize, t: LoraTarget, factor: &str) -> String {
    format!("base_model.model.model.layers.{layer}.{}.lora_{factor}.weight", t.peft_module())
}

/// Rows of a q/k output-side tensor `[out, c]` from GGUF (interleaved-RoPE) order to HF order.
pub fn gguf_rows_to_hf(t: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (out, c) = t.dims2()?;
    t.reshape((n_head, out / n_head / 2, 2, c))?.transpose(1, 2)?.reshape((out, c))
}

/// Inverse of [`gguf_rows_to_hf`] (what llama.cpp's converter does to HF q/k weights).
pub fn hf_rows_to_gguf(t: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (out, c) = t.dims2()?;
    t.reshape((n_head, 2, out / n_head / 2, c))?.transpose(1, 2)?.reshape((out, c))
}

fn rope_heads(model: &LlamaConfig, t: LoraTarget) -> Option<usize> {
    match t {
        LoraTarget::Q => Some(model.heads),
        LoraTarget::K => Some(model.kv_heads),
        _ => None,
    }
}

/// A line per finished day of training in the sim folder: the day whose pairs it trained on,
/// the adapter version, how many pairs, optimizer steps, first and last loss, seconds. A resumed
/// run may repeat a day's line; readers keep the last.
pub const TRAINING_LOG: &str = "training.jsonl";

/// The folder of day `day`'s adapter under a sim's `adapters/` folder.
pub fn day_dir(adapters_root: &Path, day: u32) -> PathBuf {
    adapters_root.join(format!("day_{day:02}"))
}

/// The newest complete `day_NN` adapter under `adapters_root`, if any (for resuming a run).
pub fn latest_day(adapters_root: &Path) -> Result<Option<(u32, PathBuf)>> {
    Ok(saved_days(adapters_root)?.pop())
}

/// Every complete adapter (both PEFT files present) under `adapters_root`, oldest day first.
pub fn saved_days(adapters_root: &Path) -> Result<Vec<(u32, PathBuf)>> {
    let rd = match std::fs::read_dir(adapters_root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", adapters_root.display())),
    };
    let mut days = Vec::new();
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(day) = name.strip_prefix("day_").and_then(|d| d.parse::<u32>().ok()) else { continue };
        let p = entry.path();
        if p.join(WEIGHTS_FILE).is_file() && p.join(CONFIG_FILE).is_file() {
            days.push((day, p));
        }
    }
    days.sort();
    Ok(days)
}

/// Save in PEFT layout (both files written atomically).
pub fn save_adapter(adapter: &LoraAdapter, model: &LlamaConfig, dir: &Path, base_model: &str) -> Result<()> {
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    for layer in 0..adapter.num_layers() {
        for t in LoraTarget::ALL {
            let Some(p) = adapter.pair(layer, t) else { continue };
            let a = p.a.as_detached_tensor().to_dtype(DType::F32)?;
            let mut b = p.b.as_detached_tensor().to_dtype(DType::F32)?;
            if let Some(h) = rope_heads(model, t) {
                b = gguf_rows_to_hf(&b, h)?;
            }
            tensors.insert(peft_tensor_name(layer, t, "A"), a);
            tensors.insert(peft_tensor_name(layer, t, "B"), b);
        }
    }
    write_atomic(&dir.join(WEIGHTS_FILE), &serialize_safetensors(&tensors)?)?;
    let cfg = adapter.config();
    let alpha = if cfg.alpha.fract() == 0.0 { json!(cfg.alpha as i64) } else { json!(cfg.alpha) };
    let targets: Vec<&str> = cfg.targets.iter().map(|t| t.peft_name()).collect();
    let conf = json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": alpha,
        "lora_dropout": cfg.dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": cfg.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": targets,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": false
    });
    write_json_py(&dir.join(CONFIG_FILE), &conf)?;
    Ok(())
}

/// Load a PEFT adapter for `model` (factors in `dtype` on `device`).
pub fn load_adapter(
    dir: &Path,
    model: &LlamaConfig,
    dtype: DType,
    device: &Device,
    trainable: bool,
) -> Result<LoraAdapter> {
    let cpath = dir.join(CONFIG_FILE);
    let conf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cpath).with_context(|| format!("reading {}", cpath.display()))?)
            .with_context(|| format!("parsing {}", cpath.display()))?;
    if conf.get("peft_type").and_then(|v| v.as_str()).is_some_and(|t| t != "LORA") {
        bail!("{}: not a LoRA adapter", cpath.display());
    }
    if conf.get("use_rslora").and_then(|v| v.as_bool()) == Some(true)
        || conf.get("use_dora").and_then(|v| v.as_bool()) == Some(true)
    {
        bail!("{}: rsLoRA/DoRA adapters are not supported", cpath.display());
    }
    let r = conf.get("r").and_then(|v| v.as_u64()).context("adapter_config.json lacks r")? as usize;
    let alpha = conf.get("lora_alpha").and_then(|v| v.as_f64()).context("adapter_config.json lacks lora_alpha")?;
    let dropout = conf.get("lora_dropout").and_then(|v| v.as_f64()).unwrap_or(0.0);
    let mut targets = Vec::new();
    match conf.get("target_modules") {
        Some(serde_json::Value::Array(a)) => {
            for v in a {
                let s = v.as_str().context("target_modules must hold strings")?;
                targets
                    .push(LoraTarget::from_peft_name(s).with_context(|| format!("unsupported target module {s:?}"))?);
            }
        }
        _ => bail!("{}: target_modules must be a list", cpath.display()),
    }
    let wpath = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&wpath).with_context(|| format!("reading {}", wpath.display()))?;
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .with_context(|| format!("parsing {}", wpath.display()))?;
    let vdtype = match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    };
    let mut layers = Vec::with_capacity(model.layers);
    for layer in 0..model.layers {
        let mut row: [Option<LoraPair>; 7] = Default::default();
        for &t in &targets {
            let (fan_in, out) = model.proj_dims(t);
            let (an, bn) = (peft_tensor_name(layer, t, "A"), peft_tensor_name(layer, t, "B"));
            let a = tensors.remove(&an).with_context(|| format!("{}: missing {an}", wpath.display()))?;
            let mut b = tensors.remove(&bn).with_context(|| format!("{}: missing {bn}", wpath.display()))?;
            if a.dims() != [r, fan_in] || b.dims() != [out, r] {
                bail!(
                    "{}: {an}/{bn} have shapes {:?}/{:?}, expected [{r}, {fan_in}]/[{out}, {r}]",
                    wpath.display(),
                    a.dims(),
                    b.dims()
                );
            }
            if let Some(h) = rope_heads(model, t) {
                b = hf_rows_to_gguf(&b, h)?;
            }
            row[t.index()] = Some(LoraPair {
                a: Var::from_tensor(&a.to_dtype(vdtype)?.contiguous()?)?,
                b: Var::from_tensor(&b.to_dtype(vdtype)?.contiguous()?)?,
            });
        }
        layers.push(row);
    }
    if let Some(extra) = tensors.keys().next() {
        bail!("{}: unexpected tensor {extra} (adapter for a different model?)", wpath.display());
    }
    Ok(LoraAdapter::from_pairs(LoraConfig { r, alpha, dropout, targets }, layers, trainable))
}

/// Minimal safetensors writer (8-byte header length, JSON header, raw little-endian data), so
/// the file is produced in memory and written atomically.
fn serialize_safetensors(tensors: &BTreeMap<String, Tensor>) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut data: Vec<u8> = Vec::new();
    for (name, t) in tensors {
        let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let begin = data.len();
        for x in v {
            data.extend_from_slice(&x.to_le_bytes());
        }
        header.insert(name.clone(), json!({"dtype": "F32", "shape": t.dims(), "data_offsets": [begin, data.len()]}));
    }
    let mut h = serde_json::to_string(&serde_json::Value::Object(header))?.into_bytes();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + data.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::rotary_emb::{rope_i_slow, rope_slow};

    /// The claim behind the q/k conversion: HF weights with half-split RoPE give the same
    /// attention scores as their GGUF-permuted rows with interleaved RoPE.
    #[test]
    fn permuted_rows_with_interleaved_rope_match_hf_layout() -> Result<()> {
        let dev = Device::Cpu;
        let (heads, hd, hidden, seq) = (2usize, 8usize, 6usize, 5usize);
        let wq = Tensor::randn(0f64, 1.0, (heads * hd, hidden), &dev)?;
        let wk = Tensor::randn(0f64, 1.0, (heads * hd, hidden), &dev)?;
        let x = Tensor::randn(0f64, 1.0, (seq, hidden), &dev)?;
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        for p in 0..seq {
            for i in 0..hd / 2 {
                let a = p as f64 / 10000f64.powf(2.0 * i as f64 / hd as f64);
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (seq, hd / 2), &dev)?;
        let sin = Tensor::from_vec(sin, (seq, hd / 2), &dev)?;
        let scores = |wq: &Tensor, wk: &Tensor, interleaved: bool| -> Result<Tensor> {
            let q = x.matmul(&wq.t()?)?.reshape((1, seq, heads, hd))?.transpose(1, 2)?.contiguous()?;
            let k = x.matmul(&wk.t()?)?.reshape((1, seq, heads, hd))?.transpose(1, 2)?.contiguous()?;
            let (q, k) = if interleaved {
                (rope_i_slow(&q, &cos, &sin)?, rope_i_slow(&k, &cos, &sin)?)
            } else {
                (rope_slow(&q, &cos, &sin)?, rope_slow(&k, &cos, &sin)?)
            };
            Ok(q.matmul(&k.t()?)?)
        };
        let hf = scores(&wq, &wk, false)?;
        let gg = scores(&hf_rows_to_gguf(&wq, heads)?, &hf_rows_to_gguf(&wk, heads)?, true)?;
        let diff = (hf - gg)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-9, "max diff {diff}");
        let back = gguf_rows_to_hf(&hf_rows_to_gguf(&wq, heads)?, heads)?;
        assert_eq!(back.to_vec2::<f64>()?, wq.to_vec2::<f64>()?);
        Ok(())
    }
}
