//! Training the assistant between simulated days: LoRA adapters trained with DPO or KTO on the
//! day's preference pairs (plus replay), on a worker thread that owns the device, published as
//! versioned adapters that inference swaps in atomically. Also the daily MMLU check and the
//! offline `train`/`score` entry points.
//!
//! Defaults are the original's (TRL 0.19 + PEFT): LoRA r16/α32, β 0.1, batch 1 × accumulation 4
//! (KTO 2 × 2), 2 epochs, lr 5e-5 linear to 0, no warmup, clip 1.0, AdamW(0.9, 0.999, 1e-8, wd 0),
//! dropout off while training, reference = base with the adapter off, computed once per run.
//!
//! Memory and speed (SmolLM2-135M-Instruct Q4_1 GGUF, CPU, measured with `propersim bench
//! --dpo`, debug build, 4 short pairs packed into 72-token rows): the frozen base held quantized
//! (`train_weights = "quantized"`, the default) takes 97 MB, bf16 269 MB, f32 538 MB (tied
//! embeddings stored once); LoRA r16 on all 7 projections is 4.88 M parameters (20 MB, plus
//! 40 MB of gradients and 40 MB of AdamW moments). Peak RSS of the whole process: 0.48 / 0.64 /
//! 0.79 GB; about 5 CPU-seconds per optimizer step in each mode. `train::plan` estimates these
//! parts for any model. On a CPU shared with other work, set `RAYON_NUM_THREADS=1`:
//! multi-threaded gemm spins and was 2–3× slower per step there.

// The lower crates under the names the modules use (`crate::config`, `crate::llm`).
use propersim_core::{config, storage};
use propersim_llm as llm;
use propersim_model as model;

pub mod adapter;
pub mod data;
pub mod dpo;
mod fit;
pub mod kto;
pub mod logprob;
pub mod mmlu;
pub mod offline;
pub mod optim;
pub mod plan;
pub mod replay;
pub mod worker;

use candle_core::Device;
use serde::{Deserialize, Serialize};

pub use crate::config::TrainMethod;
use crate::model::llama::{Llama, TrainWeights};
use crate::model::lora::LoraConfig;
pub use data::{AppendEos, ChatFormatter, PreferencePair, TokenLimits};
pub use offline::{bench_dpo, score_pairs, train_offline, BenchReport, OfflineTrainOptions, PairScore};
pub use optim::AdamWConfig;

/// Everything one training run needs besides data and model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub method: TrainMethod,
    /// Used when a fresh adapter is created.
    pub lora: LoraConfig,
    /// Apply LoRA dropout while training (TRL's `disable_dropout=True` turns it off).
    pub lora_dropout_in_training: bool,
    pub beta: f64,
    /// DPO label smoothing ε (TRL 0.19 "sigmoid" with ε; 0 = plain sigmoid loss).
    pub label_smoothing: f64,
    pub kto_desirable_weight: f64,
    pub kto_undesirable_weight: f64,
    /// KTO drops completions containing this text (the original drops "No Recommendation").
    pub kto_exclude: Option<String>,
    /// Pairs (DPO) or examples (KTO) per micro-batch.
    pub batch_size: usize,
    pub grad_accum: usize,
    pub epochs: usize,
    pub adam: AdamWConfig,
    pub max_grad_norm: Option<f64>,
    /// Recompute each decoder layer in the backward pass instead of keeping its activations
    /// (the original trains with `gradient_checkpointing=True`): the same gradients, a fraction
    /// of the memory at long prompts, about a third more compute. Refused with LoRA dropout.
    #[serde(default = "default_true")]
    pub gradient_checkpointing: bool,
    pub seed: u64,
    pub limits: TokenLimits,
    /// DPO only: add this weight times the chosen answer's per-token negative log-likelihood
    /// (TRL's `rpo_alpha`; none: plain DPO, as the original).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_alpha: Option<f64>,
}

impl TrainConfig {
    pub fn dpo() -> Self {
        TrainConfig {
            method: TrainMethod::Dpo,
            lora: LoraConfig::default(),
            lora_dropout_in_training: false,
            beta: 0.1,
            label_smoothing: 0.0,
            kto_desirable_weight: 1.0,
            kto_undesirable_weight: 1.0,
            kto_exclude: Some("No Recommendation".into()),
            batch_size: 1,
            grad_accum: 4,
            epochs: 2,
            adam: AdamWConfig::default(),
            max_grad_norm: Some(1.0),
            gradient_checkpointing: true,
            seed: 42,
            limits: TokenLimits::default(),
            rpo_alpha: None,
        }
    }

    pub fn kto() -> Self {
        TrainConfig {
            method: TrainMethod::Kto,
            batch_size: 2,
            grad_accum: 2,
            limits: TokenLimits { append_eos: data::AppendEos::IfMissing, ..TokenLimits::default() },
            ..TrainConfig::dpo()
        }
    }

    /// The original's settings for `m`; `none` trains nothing, and is refused.
    pub fn for_method(m: TrainMethod) -> anyhow::Result<Self> {
        match m {
            TrainMethod::Dpo => Ok(TrainConfig::dpo()),
            TrainMethod::Kto => Ok(TrainConfig::kto()),
            TrainMethod::None => anyhow::bail!("train_method = none trains nothing: choose dpo or kto"),
        }
    }

    /// The daily training a sim's settings ask for: `train_method`'s settings with `[sim]`'s
    /// `train_epochs`, `train_lr`, `train_max_prompt` and `train_rpo_alpha` applied. What a sim
    /// trains each night, and what `propersim train` trains offline from the same config.
    pub fn for_sim(s: &config::SimSettings) -> anyhow::Result<Self> {
        let mut c = TrainConfig::for_method(s.train_method)?;
        c.epochs = s.train_epochs;
        if let Some(lr) = s.train_lr {
            c.adam.lr = lr;
        }
        if let Some(n) = s.train_max_prompt {
            // The prompt keeps its last `n` tokens; the completion keeps the room it had.
            let room = c.limits.max_length.saturating_sub(c.limits.max_prompt);
            c.limits.max_prompt = n;
            c.limits.max_length = n + room;
        }
        c.rpo_alpha = s.train_rpo_alpha;
        Ok(c)
    }
}

/// Metrics of one optimizer step (one JSONL line per step in the day's metrics file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: u64,
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Mean β·(logπ − logπ_ref) of chosen / desirable completions.
    pub rewards_chosen: f64,
    /// Mean β·(logπ − logπ_ref) of rejected / undesirable completions.
    pub rewards_rejected: f64,
    /// DPO: mean of rewards_chosen − rewards_rejected per pair.
    pub reward_margin: f64,
    /// DPO: share of pairs with a positive margin.
    pub reward_accuracy: f64,
    /// KTO: the clamped KL estimate z₀ (mean over the step's micro-batches).
    pub kl: f64,
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
}

/// What a training run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    pub steps: u64,
    pub examples: usize,
    pub first_loss: f64,
    pub last_loss: f64,
    pub tokens: usize,
    pub seconds: f64,
    pub ref_seconds: f64,
    /// Process CPU time of the reference pass (Linux; 0 elsewhere), so benchmarks can leave it
    /// out as they leave out its wall time.
    #[serde(default)]
    pub ref_cpu_seconds: f64,
}

/// The device training should use: CUDA when built with `--features cuda` and a GPU is present,
/// else the CPU.
pub fn pick_device() -> Device {
    #[cfg(feature = "cuda")]
    {
        if let Ok(d) = Device::cuda_if_available(0) {
            return d;
        }
    }
    Device::Cpu
}

/// The compute dtype of training on `device` (activations, norms, LoRA math): f32 on the CPU,
/// bf16 on CUDA. How the frozen weights are stored is [`TrainWeights`]' business.
pub fn model_dtype(device: &Device) -> candle_core::DType {
    if device.is_cuda() {
        candle_core::DType::BF16
    } else {
        candle_core::DType::F32
    }
}

/// The training base of a GGUF file on [`pick_device`], its frozen weights held as `weights`
/// says, computing in [`model_dtype`]. The one place the simulation and the CLI load it.
pub fn load_base(gguf: &std::path::Path, weights: TrainWeights) -> anyhow::Result<Llama> {
    let device = pick_device();
    Ok(Llama::load_gguf_as(gguf, weights, model_dtype(&device), &device)?)
}

fn default_true() -> bool {
    true
}

/// σ(x), numerically stable.
pub(crate) fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// log σ(x), numerically stable.
pub(crate) fn log_sigmoid(x: f64) -> f64 {
    x.min(0.0) - (-x.abs()).exp().ln_1p()
}
