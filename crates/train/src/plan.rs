//! `propersim train --plan`: how much memory training a model takes in each
//! [`TrainWeights`] mode, computed from the model's shape alone (a GGUF file's metadata and
//! tensor table, or a named preset for models not on disk), so one can pick a mode and a machine
//! before loading anything.
//!
//! The parts: the frozen weights (as stored, plus in the quantized mode the one matrix expanded
//! at a time), the LoRA factors, their gradients (the step's and the accumulated), AdamW's two
//! moments, the activations of one training row of `seq_len` tokens, and a fixed runtime share
//! (program, tokenizer, allocator). The activation terms count the tensors our forward creates
//! per decoder layer (see `model::llama`), with gradient checkpointing (the default) keeping
//! only each layer's input plus one layer's graph at a time. The runtime share and the
//! activation counts were checked against `propersim bench --dpo` on SmolLM2-135M at 72- and
//! 1,250-token rows (the unit test below holds the estimate to those measurements); the GPU
//! (bf16) figures are the same counts, not measured.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::DType;

use crate::config::TrainWeights;
use crate::model::llama::LlamaConfig;
use crate::model::lora::{LoraConfig, LoraTarget};

/// A model's shape and the bytes its quantized file holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelShape {
    pub name: String,
    pub cfg: LlamaConfig,
    /// The output head is the embedding matrix.
    pub tied: bool,
    /// Bytes of every tensor as the file stores it (the quantized mode's weights).
    pub file_bytes: u64,
    /// Elements of the largest matrix (the quantized mode expands one at a time).
    pub largest_matrix: u64,
    /// Where the numbers come from (a file, or a preset and the quantization it assumes).
    pub source: String,
}

/// Models the plan knows without a file: (name, shape). Both untied, GQA with 8 kv heads.
const PRESETS: &[(&str, LlamaConfig)] = &[
    (
        "llama-3.1-8b",
        LlamaConfig {
            vocab: 128_256,
            hidden: 4096,
            intermediate: 14_336,
            layers: 32,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            rope_theta: 500_000.0,
            rms_eps: 1e-5,
        },
    ),
    (
        "llama-3.3-70b",
        LlamaConfig {
            vocab: 128_256,
            hidden: 8192,
            intermediate: 28_672,
            layers: 80,
            heads: 64,
            kv_heads: 8,
            head_dim: 128,
            rope_theta: 500_000.0,
            rms_eps: 1e-5,
        },
    ),
];

/// Bytes per element of a ggml type.
fn ggml_bytes(t: GgmlDType, elems: u64) -> u64 {
    elems / t.block_size() as u64 * t.type_size() as u64
}

impl ModelShape {
    /// A GGUF file (only its header is read) or, when no such file exists, a preset's name.
    pub fn resolve(model: &Path) -> Result<ModelShape> {
        if model.is_file() {
            return ModelShape::from_gguf(model);
        }
        let name = model.to_string_lossy();
        ModelShape::preset(&name).with_context(|| {
            let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            format!("--model {name}: no such file, and not a preset (presets: {})", names.join(", "))
        })
    }

    /// The shape of a preset, with the quantized size of a Q4_K_M download: Q4_K (4.5 bits a
    /// weight) for the layers' matrices, Q6_K (6.56 bits) for the embedding and the head.
    pub fn preset(name: &str) -> Option<ModelShape> {
        let (n, cfg) = PRESETS.iter().find(|(n, _)| n.eq_ignore_ascii_case(name.trim()))?;
        let c = cfg.clone();
        let vh = (c.vocab * c.hidden) as u64;
        let layer: u64 = LoraTarget::ALL.iter().map(|&t| matrix_elems(&c, t)).sum();
        let norms = (c.hidden * (2 * c.layers + 1)) as u64;
        let file_bytes =
            2 * ggml_bytes(GgmlDType::Q6K, vh) + c.layers as u64 * ggml_bytes(GgmlDType::Q4K, layer) + norms * 4;
        Some(ModelShape {
            name: n.to_string(),
            largest_matrix: vh.max((c.hidden * c.intermediate) as u64),
            cfg: c,
            tied: false,
            file_bytes,
            source: "preset shape; quantized size assumes a Q4_K_M file (Q4_K layers, Q6_K embedding and head)".into(),
        })
    }

    /// Read a GGUF file's metadata and tensor table (no weights).
    pub fn from_gguf(path: &Path) -> Result<ModelShape> {
        let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let content = gguf_file::Content::read(&mut f).with_context(|| format!("reading GGUF {}", path.display()))?;
        let cfg = LlamaConfig::from_gguf_metadata(&content.metadata)?;
        let mut file_bytes = 0u64;
        let mut largest = 0u64;
        let mut kinds: HashMap<String, u64> = HashMap::new();
        for info in content.tensor_infos.values() {
            let elems = info.shape.elem_count() as u64;
            file_bytes += ggml_bytes(info.ggml_dtype, elems);
            *kinds.entry(format!("{:?}", info.ggml_dtype)).or_default() += elems;
            if info.shape.rank() == 2 {
                largest = largest.max(elems);
            }
        }
        let mut kinds: Vec<(String, u64)> = kinds.into_iter().collect();
        kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
        let kinds: Vec<String> = kinds.into_iter().map(|(k, _)| k).collect();
        Ok(ModelShape {
            name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            cfg,
            tied: !content.tensor_infos.contains_key("output.weight"),
            file_bytes,
            largest_matrix: largest,
            source: format!("GGUF file ({})", kinds.join(", ")),
        })
    }

    /// Parameters of the base (the tied head counted once).
    pub fn params(&self) -> u64 {
        let c = &self.cfg;
        let vh = (c.vocab * c.hidden) as u64;
        let layer: u64 = LoraTarget::ALL.iter().map(|&t| matrix_elems(c, t)).sum::<u64>() + 2 * c.hidden as u64;
        vh * if self.tied { 1 } else { 2 } + c.layers as u64 * layer + c.hidden as u64
    }
}

fn matrix_elems(c: &LlamaConfig, t: LoraTarget) -> u64 {
    let (i, o) = c.proj_dims(t);
    (i * o) as u64
}

/// What the plan assumes besides the model.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Activations, norms and the expanded weights (f32 on the CPU, bf16 on CUDA).
    pub compute: DType,
    /// Tokens in the one training row of a micro-batch (a DPO pair packs prompt, chosen and
    /// rejected in one row).
    pub seq_len: usize,
    /// Positions that go through the vocabulary projection (completion tokens); at most seq_len.
    pub predicted: usize,
    pub lora: LoraConfig,
    pub checkpointing: bool,
}

impl PlanOptions {
    /// The defaults of daily training: the maximum length (2304 tokens), half of it completions,
    /// LoRA r16 on all seven projections, checkpointing on.
    pub fn new(compute: DType) -> PlanOptions {
        PlanOptions::with_seq_len(compute, super::data::TokenLimits::default().max_length)
    }

    /// Rows of `seq_len` tokens, half of them completion tokens.
    pub fn with_seq_len(compute: DType, seq_len: usize) -> PlanOptions {
        PlanOptions { compute, seq_len, predicted: seq_len / 2, lora: LoraConfig::default(), checkpointing: true }
    }
}

/// The memory of one mode, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryPlan {
    pub weights: TrainWeights,
    /// The frozen base as held.
    pub base: u64,
    /// The largest matrix expanded to the compute dtype while in use (quantized mode, or a
    /// stored dtype other than the compute dtype).
    pub transient: u64,
    pub lora: u64,
    /// The step's gradients and the accumulated ones.
    pub grads: u64,
    /// AdamW's first and second moments.
    pub optimizer: u64,
    pub activations: u64,
    /// Program, tokenizer, allocator slack: measured on the CPU, not counted on a GPU.
    pub runtime: u64,
}

impl MemoryPlan {
    pub fn total(&self) -> u64 {
        self.base + self.transient + self.lora + self.grads + self.optimizer + self.activations + self.runtime
    }
}

/// What the process holds besides the parts counted (program, tokenizer, glibc arenas), from
/// `bench --dpo` on SmolLM2 minus the counted parts.
pub const CPU_RUNTIME_BYTES: u64 = 150_000_000;

/// Activation bytes of one training row (see the module's comment for what is counted).
pub fn activation_bytes(c: &LlamaConfig, opts: &PlanOptions) -> u64 {
    let b = opts.compute.size_in_bytes() as u64;
    let t = opts.seq_len as u64;
    let (h, i) = (c.hidden as u64, c.intermediate as u64);
    let q = (c.heads * c.head_dim) as u64;
    let kv = (c.kv_heads * c.head_dim) as u64;
    let r = opts.lora.r as u64;
    // One layer's graph: norms (5 tensors each of [t, h]), projections with their LoRA terms
    // (base output, delta, sum: 3 each), head layout copies, interleaved RoPE on q and k (about
    // 8 copies), keys and values repeated to every head, the MLP's gate, up, SiLU and product,
    // residuals; the attention scores [heads, t, t] as product, scaled, masked and softmaxed
    // (exp, max, quotient) and their transposes in the backward: 8. The backward of that layer
    // holds about as much again at its peak.
    let per_row = 10 * h + 3 * (q + 2 * kv) + 3 * (q + 2 * kv) + 8 * (q + kv) + 2 * q + 3 * h + 6 * i + 2 * h + 7 * r;
    let scores = 8 * c.heads as u64 * t * t;
    let layer = 2 * (per_row * t + scores) * b;
    // Mask and RoPE tables of the packed row, kept for the whole pass.
    let tables = (t * t + t * c.head_dim as u64) * b;
    // The head: logits, log-softmax and its gradient over the predicted positions.
    let head = 3 * opts.predicted as u64 * c.vocab as u64 * b.max(4);
    let layers = if opts.checkpointing { c.layers as u64 * t * h * b + layer } else { c.layers as u64 * layer };
    layers + tables + head
}

/// The plan of each mode for `shape`.
pub fn plan(shape: &ModelShape, opts: &PlanOptions) -> Vec<MemoryPlan> {
    let params = shape.params();
    let c = &shape.cfg;
    let lora_params: u64 = opts
        .lora
        .targets
        .iter()
        .map(|&t| {
            let (i, o) = c.proj_dims(t);
            (opts.lora.r * (i + o)) as u64
        })
        .sum::<u64>()
        * c.layers as u64;
    // Trainable factors are f32 whatever the compute dtype (`model::lora`).
    let lora = lora_params * 4;
    let cb = opts.compute.size_in_bytes() as u64;
    let runtime = if opts.compute == DType::F32 { CPU_RUNTIME_BYTES } else { 0 };
    let activations = activation_bytes(c, opts);
    TrainWeights::ALL
        .iter()
        .map(|&w| {
            let (base, stored) = match w {
                TrainWeights::Quantized => (shape.file_bytes, None),
                TrainWeights::Bf16 => (params * 2, Some(2)),
                TrainWeights::F32 => (params * 4, Some(4)),
            };
            // On the CPU the frozen-weight op expands one matrix per use and drops it; on a GPU
            // the autograd graph keeps one layer's expanded matrices until its backward (with
            // checkpointing; all layers' without).
            let expanded = if opts.compute == DType::F32 {
                shape.largest_matrix
            } else {
                let layer: u64 = LoraTarget::ALL.iter().map(|&t| matrix_elems(c, t)).sum();
                let layers = if opts.checkpointing { 1 } else { c.layers as u64 };
                shape.largest_matrix.max(layer * layers)
            };
            let transient = if stored == Some(cb) { 0 } else { expanded * cb };
            MemoryPlan { weights: w, base, transient, lora, grads: 2 * lora, optimizer: 2 * lora, activations, runtime }
        })
        .collect()
}

/// Known accelerators to compare the totals with: (name, bytes).
pub const DEVICES: &[(&str, u64)] = &[("H200 (141 GB)", 141_000_000_000), ("A100 (80 GB)", 80_000_000_000)];

fn gb(b: u64) -> String {
    format!("{:.2}", b as f64 / 1e9)
}

/// The plan as a table (GB = 10⁹ bytes), with whether each mode fits each device.
pub fn render(shape: &ModelShape, opts: &PlanOptions) -> Result<String> {
    if opts.seq_len == 0 {
        bail!("--seq-len must be positive");
    }
    let c = &shape.cfg;
    let mut s = String::new();
    writeln!(
        s,
        "{}: {:.2} B parameters, {} layers, hidden {}, vocab {}{}; {}",
        shape.name,
        shape.params() as f64 / 1e9,
        c.layers,
        c.hidden,
        c.vocab,
        if shape.tied { ", tied head" } else { "" },
        shape.source
    )?;
    writeln!(
        s,
        "training row {} tokens ({} predicted), compute {:?}, LoRA r{} on {} projections, checkpointing {}",
        opts.seq_len,
        opts.predicted,
        opts.compute,
        opts.lora.r,
        opts.lora.targets.len(),
        if opts.checkpointing { "on" } else { "off" }
    )?;
    let dev_cols: Vec<&str> = DEVICES.iter().map(|(n, _)| *n).collect();
    writeln!(
        s,
        "\n| train_weights | weights GB | expanded GB | LoRA GB | grads GB | AdamW GB | activations GB | runtime GB | total GB | {} |",
        dev_cols.join(" | ")
    )?;
    writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|{}", "---|".repeat(DEVICES.len()))?;
    for p in plan(shape, opts) {
        let fits: Vec<&str> =
            DEVICES.iter().map(|(_, cap)| if p.total() <= *cap { "fits" } else { "too big" }).collect();
        writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.weights,
            gb(p.base),
            gb(p.transient),
            gb(p.lora),
            gb(p.grads),
            gb(p.optimizer),
            gb(p.activations),
            gb(p.runtime),
            gb(p.total()),
            fits.join(" | ")
        )?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> ModelShape {
        // SmolLM2-135M's shape; the Q4_1 file's tensor bytes as its tensor table gives them.
        let cfg = LlamaConfig {
            vocab: 49_152,
            hidden: 576,
            intermediate: 1536,
            layers: 30,
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            rope_theta: 100_000.0,
            rms_eps: 1e-5,
        };
        ModelShape {
            name: "smollm2".into(),
            largest_matrix: (cfg.vocab * cfg.hidden) as u64,
            cfg,
            tied: true,
            file_bytes: 0,
            source: String::new(),
        }
    }

    #[test]
    fn parameters_and_lora_sizes_match_the_known_models() {
        let s = smollm2();
        // SmolLM2-135M: 134.5 M parameters (tied), LoRA r16 on all 7 projections 4.88 M.
        assert_eq!(s.params(), 134_515_008);
        let p = plan(&s, &PlanOptions::new(DType::F32));
        assert_eq!(p[2].lora / 4, 4_884_480);
        assert_eq!(p[2].base, s.params() * 4);
        assert_eq!(p[1].base, s.params() * 2);
        let l8 = ModelShape::preset("llama-3.1-8b").unwrap();
        assert_eq!(l8.params(), 8_030_261_248);
        let l70 = ModelShape::preset("Llama-3.3-70B").unwrap();
        assert_eq!(l70.params(), 70_553_706_496);
        // A Q4_K_M 70B download is about 42.5 GB; the preset's estimate is within 10% of it.
        assert!((l70.file_bytes as f64 / 42.5e9 - 1.0).abs() < 0.1, "{}", l70.file_bytes);
    }

    #[test]
    fn quantized_is_smallest_and_only_a_quantized_70b_fits_one_gpu() {
        let l70 = ModelShape::preset("llama-3.3-70b").unwrap();
        let p = plan(&l70, &PlanOptions::new(DType::BF16));
        let totals: Vec<u64> = p.iter().map(|m| m.total()).collect();
        assert!(totals[0] < totals[1] && totals[1] < totals[2], "{totals:?}");
        assert!(totals[0] < 80_000_000_000, "quantized 70B fits an A100: {totals:?}");
        assert!(totals[1] > 141_000_000_000, "bf16 70B (141 GB of weights alone) does not fit an H200: {totals:?}");
        let text = render(&l70, &PlanOptions::new(DType::BF16)).unwrap();
        assert!(text.contains("| quantized |") && text.contains("too big"), "{text}");
    }

    /// `propersim bench --dpo` on SmolLM2-135M Q4_1 (4 short pairs, 72 tokens a packed row,
    /// about 30 of them completion tokens; 8 steps; debug build, 1 thread): peak RSS per mode.
    /// The estimate is held to within 15% of each.
    #[test]
    fn smollm2_estimate_is_near_the_measured_peak() {
        let mut s = smollm2();
        // The Q4_1 file's tensors as the bench loaded them (`weight_bytes`).
        s.file_bytes = 96_576_768;
        let opts = PlanOptions { predicted: 30, ..PlanOptions::with_seq_len(DType::F32, 72) };
        let measured = [
            (TrainWeights::Quantized, 481_120_256u64),
            (TrainWeights::Bf16, 641_540_096),
            (TrainWeights::F32, 785_399_808),
        ];
        let p = plan(&s, &opts);
        for (w, peak) in measured {
            let est = p.iter().find(|m| m.weights == w).unwrap().total();
            let ratio = est as f64 / peak as f64;
            assert!((0.85..1.15).contains(&ratio), "{w}: estimate {est} vs measured {peak} ({ratio:.2})");
        }
        // Four of a sim's pairs (1,250-token rows, ~60 completion tokens a row; one step),
        // quantized: 1.90 GB, most of it one layer's attention scores.
        let long = PlanOptions { predicted: 60, ..PlanOptions::with_seq_len(DType::F32, 1250) };
        let est = plan(&s, &long)[0].total();
        let ratio = est as f64 / 1_899_495_424.0;
        assert!((0.85..1.15).contains(&ratio), "long rows: estimate {est} vs measured 1.90 GB ({ratio:.2})");
    }

    #[test]
    fn an_unknown_model_names_the_presets() {
        let e = ModelShape::resolve(Path::new("no-such-model")).unwrap_err().to_string();
        assert!(e.contains("llama-3.1-8b") && e.contains("llama-3.3-70b"), "{e}");
    }
}
