//! Entry points outside the simulation loop: `propersim train` (offline DPO/KTO from a pairs
//! file), `propersim score` (summed completion log-probs per pair, with and without the adapter)
//! and the DPO benchmark. Also [`train_pairs`], which the worker uses for a day's job.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::data::{completion_text, read_pairs, tokenize, tokenize_pair, ChatFormatter, PreferencePair, TokenLimits};
pub use super::fit::cpu_seconds;
use super::kto::KtoExample;
use super::logprob::{completion_logps_f64, Batch};
use super::{adapter, dpo, kto, StepMetrics, TrainConfig, TrainMethod, TrainSummary};
use crate::model::llama::Llama;
use crate::model::lora::LoraAdapter;

/// Tokenize `pairs` and train `adapter` with the configured method.
pub fn train_pairs(
    model: &Llama,
    adapter: &LoraAdapter,
    fmt: &dyn ChatFormatter,
    pairs: &[PreferencePair],
    cfg: &TrainConfig,
    on_step: &mut dyn FnMut(&StepMetrics) -> Result<()>,
) -> Result<TrainSummary> {
    match cfg.method {
        TrainMethod::None => bail!("train_method = none trains nothing: choose dpo or kto"),
        TrainMethod::Dpo => {
            let toks = pairs
                .iter()
                .enumerate()
                .map(|(i, p)| tokenize_pair(fmt, p, &cfg.limits).with_context(|| format!("pair {}", i + 1)))
                .collect::<Result<Vec<_>>>()?;
            dpo::train_dpo(model, adapter, &toks, cfg, on_step)
        }
        TrainMethod::Kto => {
            let mut ex = Vec::new();
            for (i, p) in pairs.iter().enumerate() {
                for (answer, desirable) in [(&p.chosen, true), (&p.rejected, false)] {
                    if let Some(skip) = &cfg.kto_exclude {
                        if completion_text(answer).contains(skip.as_str()) {
                            continue;
                        }
                    }
                    let seq =
                        tokenize(fmt, &p.prompt, answer, &cfg.limits).with_context(|| format!("pair {}", i + 1))?;
                    ex.push(KtoExample { seq, desirable });
                }
            }
            kto::train_kto(model, adapter, &ex, cfg, on_step)
        }
    }
}

/// `propersim score` output: one JSON line per pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairScore {
    /// Summed completion log-prob of the chosen answer with the adapter.
    pub chosen: f64,
    pub rejected: f64,
    /// The same with the adapter off (the base model).
    pub ref_chosen: f64,
    pub ref_rejected: f64,
    pub chosen_tokens: usize,
    pub rejected_tokens: usize,
}

/// Score each pair with and without `adapter`, writing one JSON line per pair to `out`.
pub fn score_pairs(
    model: &Llama,
    adapter: Option<&LoraAdapter>,
    fmt: &dyn ChatFormatter,
    pairs: &[PreferencePair],
    limits: &TokenLimits,
    out: &mut dyn Write,
) -> Result<Vec<PairScore>> {
    let mut scores = Vec::with_capacity(pairs.len());
    for (i, p) in pairs.iter().enumerate() {
        let t = tokenize_pair(fmt, p, limits).with_context(|| format!("pair {}", i + 1))?;
        let b = Batch::new(&[&t.chosen, &t.rejected], model.dtype(), model.device())?;
        let reference = completion_logps_f64(model, &b, None)?;
        let policy = match adapter {
            Some(a) => completion_logps_f64(model, &b, Some(a))?,
            None => reference.clone(),
        };
        let s = PairScore {
            chosen: policy[0],
            rejected: policy[1],
            ref_chosen: reference[0],
            ref_rejected: reference[1],
            chosen_tokens: t.chosen.completion.len(),
            rejected_tokens: t.rejected.completion.len(),
        };
        writeln!(out, "{}", serde_json::to_string(&s)?)?;
        scores.push(s);
    }
    Ok(scores)
}

/// Options of `propersim train`.
#[derive(Debug, Clone)]
pub struct OfflineTrainOptions {
    pub pairs: PathBuf,
    /// Output folder: the adapter (PEFT layout) and `metrics.jsonl`.
    pub out: PathBuf,
    pub config: TrainConfig,
    /// Recorded in `adapter_config.json` (e.g. the GGUF file name).
    pub base_model_name: String,
    /// Continue training this adapter instead of a fresh one.
    pub init_adapter: Option<PathBuf>,
}

/// Train an adapter from a pairs file and save it under `opts.out`.
pub fn train_offline(model: &Llama, fmt: &dyn ChatFormatter, opts: &OfflineTrainOptions) -> Result<TrainSummary> {
    let pairs = read_pairs(&opts.pairs)?;
    if pairs.is_empty() {
        bail!("{} holds no preference pairs", opts.pairs.display());
    }
    let adapter = match &opts.init_adapter {
        Some(dir) => adapter::load_adapter(dir, model.config(), model.dtype(), model.device(), true)?,
        None => {
            LoraAdapter::new(opts.config.lora.clone(), model.config(), model.dtype(), model.device(), opts.config.seed)?
        }
    };
    std::fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    let metrics = opts.out.join("metrics.jsonl");
    if metrics.exists() {
        std::fs::remove_file(&metrics).with_context(|| format!("removing old {}", metrics.display()))?;
    }
    let mut on_step = |m: &StepMetrics| -> Result<()> {
        crate::storage::append_jsonl(&metrics, m)?;
        tracing::info!(step = m.step, loss = m.loss, margin = m.reward_margin, kl = m.kl, "train step");
        Ok(())
    };
    let summary = train_pairs(model, &adapter, fmt, &pairs, &opts.config, &mut on_step)?;
    adapter::save_adapter(&adapter, model.config(), &opts.out, &opts.base_model_name)?;
    Ok(summary)
}

/// DPO throughput and memory on the given model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub steps: u64,
    pub pairs_per_step: usize,
    pub seconds: f64,
    /// Reference log-prob pass (once per run), included in `seconds`.
    pub ref_seconds: f64,
    pub steps_per_s: f64,
    /// Tokens through the policy forward+backward per second (both sides of each pair).
    pub tokens_per_s: f64,
    pub tokens: usize,
    /// Process CPU time (user + system) over the run: on a shared machine wall time overstates.
    pub cpu_seconds: f64,
    /// Optimizer steps per CPU-second of the training loop, the reference pass left out as in
    /// `steps_per_s` (≈ steps/s on one dedicated core).
    pub steps_per_cpu_s: f64,
    /// How the frozen base was held.
    pub train_weights: String,
    pub peak_rss_bytes: u64,
    pub weight_bytes: usize,
    pub lora_params: usize,
}

/// Run `steps` DPO optimizer steps (batch × accumulation from `cfg`) over `pairs` (cycled) on a
/// fresh adapter and measure. Peak RSS is the process's high-water mark (Linux `VmHWM`).
pub fn bench_dpo(
    model: &Llama,
    fmt: &dyn ChatFormatter,
    pairs: &[PreferencePair],
    steps: usize,
    cfg: &TrainConfig,
) -> Result<BenchReport> {
    if pairs.is_empty() || steps == 0 {
        bail!("the benchmark needs pairs and at least one step");
    }
    let per_step = cfg.batch_size * cfg.grad_accum;
    let set: Vec<PreferencePair> = pairs.iter().cycle().take(per_step * steps).cloned().collect();
    let cfg = TrainConfig { method: TrainMethod::Dpo, epochs: 1, ..cfg.clone() };
    let adapter = LoraAdapter::new(cfg.lora.clone(), model.config(), model.dtype(), model.device(), cfg.seed)?;
    let c0 = cpu_seconds().unwrap_or(0.0);
    let t0 = Instant::now();
    let s = train_pairs(model, &adapter, fmt, &set, &cfg, &mut |_| Ok(()))?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds().unwrap_or(0.0) - c0;
    let train_secs = (s.seconds - s.ref_seconds).max(1e-9);
    Ok(BenchReport {
        steps: s.steps,
        pairs_per_step: per_step,
        seconds: secs,
        ref_seconds: s.ref_seconds,
        steps_per_s: s.steps as f64 / train_secs,
        tokens_per_s: s.tokens as f64 / train_secs,
        tokens: s.tokens,
        cpu_seconds: cpu,
        steps_per_cpu_s: if cpu > s.ref_cpu_seconds { s.steps as f64 / (cpu - s.ref_cpu_seconds) } else { 0.0 },
        train_weights: model.train_weights().to_string(),
        peak_rss_bytes: peak_rss_bytes().unwrap_or(0),
        weight_bytes: model.weight_bytes(),
        lora_params: adapter.num_params(),
    })
}

/// The process's peak resident set size, from `/proc/self/status` (Linux only).
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
