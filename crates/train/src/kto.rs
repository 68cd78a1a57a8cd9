//! KTO on a LoRA adapter, as TRL computes it.
//!
//! Each preference pair becomes two unpaired examples (chosen = desirable, rejected =
//! undesirable). Within each micro-batch the KL reference point z₀ is estimated from mismatched
//! prompt/completion pairs (completions rotated by one: prompt i with completion i−1):
//! z₀ = max(0, mean(logπ(y'|x) − logπ_ref(y'|x))), detached. Losses:
//! desirable w_d·(1 − σ(β(r − z₀))), undesirable w_u·(1 − σ(β(z₀ − r))), r = logπ − logπ_ref,
//! averaged over the micro-batch. Micro-batches are fixed once (seeded shuffle, then sequential,
//! as TRL requires with the KL term) so the reference log-probs are computed once per run.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::fit::{fit, Objective, StepStats};
use super::logprob::{completion_grads, completion_logps_f64, Batch, Sequence};
use super::{sigmoid, StepMetrics, TrainConfig, TrainSummary};
use crate::model::llama::Llama;
use crate::model::lora::LoraAdapter;

/// One unpaired example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KtoExample {
    pub seq: Sequence,
    pub desirable: bool,
}

/// Per-example loss and derivative w.r.t. its policy log-prob (before averaging).
pub fn kto_term(policy: f64, reference: f64, z0: f64, desirable: bool, beta: f64, w_d: f64, w_u: f64) -> (f64, f64) {
    let r = policy - reference;
    if desirable {
        let s = sigmoid(beta * (r - z0));
        (w_d * (1.0 - s), -w_d * beta * s * (1.0 - s))
    } else {
        let s = sigmoid(beta * (z0 - r));
        (w_u * (1.0 - s), w_u * beta * s * (1.0 - s))
    }
}

/// A fixed micro-batch: example indices plus the mismatched (KL) sequences.
struct Micro {
    idx: Vec<usize>,
    kl: Vec<Sequence>,
    ref_logps: Vec<f64>,
    ref_kl: Vec<f64>,
}

fn build_micro_batches(examples: &[KtoExample], cfg: &TrainConfig) -> Result<Vec<Micro>> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed));
    let mut groups: Vec<Vec<usize>> = order.chunks(cfg.batch_size).map(|c| c.to_vec()).collect();
    // A trailing group of one would pair its prompt with its own completion; fold it back.
    if groups.len() > 1 && groups.last().map(|g| g.len()) == Some(1) {
        let last = groups.pop().unwrap_or_default();
        if let Some(prev) = groups.last_mut() {
            prev.extend(last);
        }
    }
    Ok(groups
        .into_iter()
        .map(|idx| {
            let n = idx.len();
            let kl = (0..n)
                .map(|j| Sequence {
                    prompt: examples[idx[j]].seq.prompt.clone(),
                    completion: examples[idx[(j + n - 1) % n]].seq.completion.clone(),
                })
                .collect();
            Micro { idx, kl, ref_logps: Vec::new(), ref_kl: Vec::new() }
        })
        .collect())
}

/// Train `adapter` with KTO on `examples`.
pub fn train_kto(
    model: &Llama,
    adapter: &LoraAdapter,
    examples: &[KtoExample],
    cfg: &TrainConfig,
    on_step: &mut dyn FnMut(&StepMetrics) -> Result<()>,
) -> Result<TrainSummary> {
    if examples.len() < 2 {
        bail!("KTO needs at least 2 examples (the KL term pairs prompts with other completions)");
    }
    if cfg.batch_size < 2 || cfg.grad_accum == 0 || cfg.epochs == 0 {
        bail!("KTO needs batch size ≥ 2 and positive gradient accumulation and epochs");
    }
    let t0 = Instant::now();
    let c0 = super::fit::cpu_seconds().unwrap_or(0.0);
    adapter.set_dropout(cfg.lora_dropout_in_training);
    let (dt, dev) = (model.dtype(), model.device());
    let mut micros = build_micro_batches(examples, cfg)?;
    for m in &mut micros {
        let rows: Vec<&Sequence> = m.idx.iter().map(|&i| &examples[i].seq).collect();
        m.ref_logps = completion_logps_f64(model, &Batch::new(&rows, dt, dev)?, None)?;
        let kl_rows: Vec<&Sequence> = m.kl.iter().collect();
        m.ref_kl = completion_logps_f64(model, &Batch::new(&kl_rows, dt, dev)?, None)?;
    }
    let summary = TrainSummary {
        examples: examples.len(),
        ref_seconds: t0.elapsed().as_secs_f64(),
        ref_cpu_seconds: super::fit::cpu_seconds().map_or(0.0, |c| c - c0),
        ..Default::default()
    };
    let n = micros.len();
    let mut kto = Kto { model, adapter, examples, cfg, micros };
    fit(adapter, cfg, &mut kto, n, summary, t0, on_step)
}

/// KTO as the shared loop drives it: the same micro-batches in the same order every epoch.
struct Kto<'a> {
    model: &'a Llama,
    adapter: &'a LoraAdapter,
    examples: &'a [KtoExample],
    cfg: &'a TrainConfig,
    micros: Vec<Micro>,
}

impl Objective for Kto<'_> {
    /// Index into `micros`.
    type Micro = usize;

    fn micro_batches(&mut self, _epoch: usize) -> Vec<usize> {
        (0..self.micros.len()).collect()
    }

    fn grads(&mut self, &mi: &usize, stats: &mut StepStats) -> Result<GradStore> {
        let (model, cfg, m) = (self.model, self.cfg, &self.micros[mi]);
        let (dt, dev) = (model.dtype(), model.device());
        // KL estimate with the current policy, no gradient.
        let kl_rows: Vec<&Sequence> = m.kl.iter().collect();
        let pol_kl = completion_logps_f64(model, &Batch::new(&kl_rows, dt, dev)?, Some(self.adapter))?;
        let n = m.idx.len();
        let z0 = (pol_kl.iter().zip(&m.ref_kl).map(|(p, r)| p - r).sum::<f64>() / n as f64).max(0.0);

        let rows: Vec<&Sequence> = m.idx.iter().map(|&i| &self.examples[i].seq).collect();
        let batch = Batch::new(&rows, dt, dev)?;
        let mut loss = 0.0;
        let (grads, _) = completion_grads(model, &batch, self.adapter, cfg.gradient_checkpointing, |vals| {
            let mut coefs = vec![0f64; n];
            for j in 0..n {
                let ex = &self.examples[m.idx[j]];
                let (l, d) = kto_term(
                    vals[j],
                    m.ref_logps[j],
                    z0,
                    ex.desirable,
                    cfg.beta,
                    cfg.kto_desirable_weight,
                    cfg.kto_undesirable_weight,
                );
                loss += l / n as f64;
                coefs[j] = d / n as f64;
                let reward = cfg.beta * (vals[j] - m.ref_logps[j]);
                if ex.desirable {
                    stats.chosen.push(reward);
                } else {
                    stats.rejected.push(reward);
                }
            }
            Ok(coefs)
        })?;
        stats.loss += loss;
        stats.terms += 1;
        stats.kl += z0;
        stats.tokens += batch.tokens();
        Ok(grads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kto_terms_at_start_and_their_derivatives() {
        // Policy == reference and z0 = 0: loss 0.5 each side.
        let (l, d) = kto_term(-3.0, -3.0, 0.0, true, 0.1, 1.0, 1.0);
        assert!((l - 0.5).abs() < 1e-12 && (d + 0.025).abs() < 1e-12);
        let (l, d) = kto_term(-3.0, -3.0, 0.0, false, 0.1, 1.0, 2.0);
        assert!((l - 1.0).abs() < 1e-12 && (d - 0.05).abs() < 1e-12);
        let h = 1e-6;
        for des in [true, false] {
            let f = |p: f64| kto_term(p, -2.0, 0.3, des, 0.4, 1.3, 0.7).0;
            let fd = (f(-1.0 + h) - f(-1.0 - h)) / (2.0 * h);
            assert!((fd - kto_term(-1.0, -2.0, 0.3, des, 0.4, 1.3, 0.7).1).abs() < 1e-7);
        }
    }
}
