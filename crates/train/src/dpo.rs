//! DPO (sigmoid loss, optional label smoothing) on a LoRA adapter.
//!
//! L = −(1−ε)·log σ(β·Δ) − ε·log σ(−β·Δ), Δ = (logπ(y_c) − logπ_ref(y_c)) − (logπ(y_r) − logπ_ref(y_r)),
//! log-probs summed over completion tokens. The loss is a scalar function of the four summed
//! log-probs, so we compute it and its derivative on the host and backpropagate the surrogate
//! Σ (∂L/∂logπ_i)·logπ_i through the model: same gradients, no scalar-op corner cases in candle.
//!
//! With `rpo_alpha` (TRL's option of that name, from RPO) each pair adds α times the chosen
//! answer's negative log-likelihood per token, −α·logπ(y_c)/|y_c|. Plain DPO can lower both
//! answers as long as the rejected falls faster: trained on a day of SmolLM2's pairs, the chosen
//! "No Recommendation" lost likelihood too, and the model went on recommending. The term makes
//! the chosen answer itself more likely.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::data::TokenizedPair;
use super::fit::{fit, Objective, StepStats};
use super::logprob::{completion_grads, completion_logps_f64, Batch, Sequence};
use super::{log_sigmoid, sigmoid, StepMetrics, TrainConfig, TrainSummary};
use crate::model::llama::Llama;
use crate::model::lora::LoraAdapter;

/// Loss and derivatives of one pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoTerms {
    pub loss: f64,
    /// ∂L/∂logπ(y_c); ∂L/∂logπ(y_r) is its negative.
    pub d_chosen: f64,
    pub chosen_reward: f64,
    pub rejected_reward: f64,
}

pub fn dpo_terms(pc: f64, pr: f64, rc: f64, rr: f64, beta: f64, eps: f64) -> DpoTerms {
    let delta = (pc - rc) - (pr - rr);
    let x = beta * delta;
    let loss = -(1.0 - eps) * log_sigmoid(x) - eps * log_sigmoid(-x);
    let d_delta = -(1.0 - eps) * beta * sigmoid(-x) + eps * beta * sigmoid(x);
    DpoTerms { loss, d_chosen: d_delta, chosen_reward: beta * (pc - rc), rejected_reward: beta * (pr - rr) }
}

/// The RPO term of a pair: its loss and ∂/∂logπ(y_c) for a chosen answer of `tokens` tokens
/// whose summed log-prob is `pc`.
pub fn nll_term(pc: f64, tokens: usize, alpha: f64) -> (f64, f64) {
    let n = tokens.max(1) as f64;
    (-alpha * pc / n, -alpha / n)
}

/// Reference log-probs (adapter off) of each pair: `(chosen, rejected)`.
pub fn reference_logps(model: &Llama, pairs: &[TokenizedPair]) -> Result<Vec<(f64, f64)>> {
    let mut out = Vec::with_capacity(pairs.len());
    for p in pairs {
        let b = Batch::pairs(&[(&p.chosen, &p.rejected)], model.dtype(), model.device())?;
        let v = completion_logps_f64(model, &b, None)?;
        out.push((v[0], v[1]));
    }
    Ok(out)
}

/// Train `adapter` with DPO on `pairs`; `on_step` sees each optimizer step's metrics.
pub fn train_dpo(
    model: &Llama,
    adapter: &LoraAdapter,
    pairs: &[TokenizedPair],
    cfg: &TrainConfig,
    on_step: &mut dyn FnMut(&StepMetrics) -> Result<()>,
) -> Result<TrainSummary> {
    if pairs.is_empty() {
        bail!("DPO needs at least one preference pair");
    }
    if cfg.batch_size == 0 || cfg.grad_accum == 0 || cfg.epochs == 0 {
        bail!("batch size, gradient accumulation and epochs must be positive");
    }
    let t0 = Instant::now();
    let c0 = super::fit::cpu_seconds().unwrap_or(0.0);
    adapter.set_dropout(cfg.lora_dropout_in_training);
    let refs = reference_logps(model, pairs)?;
    let summary = TrainSummary {
        examples: pairs.len(),
        ref_seconds: t0.elapsed().as_secs_f64(),
        ref_cpu_seconds: super::fit::cpu_seconds().map_or(0.0, |c| c - c0),
        ..Default::default()
    };
    let mut dpo = Dpo { model, adapter, pairs, cfg, refs, rng: rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed) };
    fit(adapter, cfg, &mut dpo, pairs.len().div_ceil(cfg.batch_size), summary, t0, on_step)
}

/// DPO as the shared loop drives it: each epoch reshuffles the pairs into micro-batches.
struct Dpo<'a> {
    model: &'a Llama,
    adapter: &'a LoraAdapter,
    pairs: &'a [TokenizedPair],
    cfg: &'a TrainConfig,
    refs: Vec<(f64, f64)>,
    rng: rand_chacha::ChaCha8Rng,
}

impl Objective for Dpo<'_> {
    /// Indices of the pairs.
    type Micro = Vec<usize>;

    fn micro_batches(&mut self, _epoch: usize) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.pairs.len()).collect();
        order.shuffle(&mut self.rng);
        order.chunks(self.cfg.batch_size).map(<[usize]>::to_vec).collect()
    }

    fn grads(&mut self, chunk: &Vec<usize>, stats: &mut StepStats) -> Result<GradStore> {
        let (model, cfg) = (self.model, self.cfg);
        let rows: Vec<(&Sequence, &Sequence)> =
            chunk.iter().map(|&i| (&self.pairs[i].chosen, &self.pairs[i].rejected)).collect();
        let batch = Batch::pairs(&rows, model.dtype(), model.device())?;
        let n = chunk.len();
        let mut terms = Vec::with_capacity(n);
        // Log-probs come as chosen₀, rejected₀, chosen₁, …; the coefficients are ∂L/∂logπ.
        let (grads, _) = completion_grads(model, &batch, self.adapter, cfg.gradient_checkpointing, |vals| {
            let mut coefs = vec![0f64; 2 * n];
            for (j, &i) in chunk.iter().enumerate() {
                let (rc, rr) = self.refs[i];
                let mut t = dpo_terms(vals[2 * j], vals[2 * j + 1], rc, rr, cfg.beta, cfg.label_smoothing);
                coefs[2 * j + 1] = -t.d_chosen / n as f64;
                if let Some(alpha) = cfg.rpo_alpha {
                    let (loss, d) = nll_term(vals[2 * j], self.pairs[i].chosen.completion.len(), alpha);
                    t.loss += loss;
                    t.d_chosen += d;
                }
                coefs[2 * j] = t.d_chosen / n as f64;
                terms.push(t);
            }
            Ok(coefs)
        })?;
        for t in terms {
            stats.loss += t.loss;
            stats.terms += 1;
            stats.chosen.push(t.chosen_reward);
            stats.rejected.push(t.rejected_reward);
            stats.pairs += 1;
            stats.correct += usize::from(t.chosen_reward > t.rejected_reward);
        }
        stats.tokens += batch.tokens();
        Ok(grads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_is_ln2_at_equal_policy_and_reference() {
        let t = dpo_terms(-5.0, -7.0, -5.0, -7.0, 0.1, 0.0);
        assert!((t.loss - std::f64::consts::LN_2).abs() < 1e-12);
        assert!((t.d_chosen + 0.05).abs() < 1e-12);
    }

    #[test]
    fn rpo_term_is_the_chosen_per_token_nll_and_its_derivative() {
        let (loss, d) = nll_term(-12.0, 4, 0.5);
        assert!((loss - 1.5).abs() < 1e-12);
        let h = 1e-6;
        let fd = (nll_term(-12.0 + h, 4, 0.5).0 - nll_term(-12.0 - h, 4, 0.5).0) / (2.0 * h);
        assert!((fd - d).abs() < 1e-9, "{fd} vs {d}");
    }

    #[test]
    fn derivative_matches_finite_difference_with_smoothing() {
        let f = |pc: f64| dpo_terms(pc, -3.0, -2.5, -3.5, 0.3, 0.1).loss;
        let h = 1e-6;
        let fd = (f(-2.0 + h) - f(-2.0 - h)) / (2.0 * h);
        let t = dpo_terms(-2.0, -3.0, -2.5, -3.5, 0.3, 0.1);
        assert!((fd - t.d_chosen).abs() < 1e-7, "{fd} vs {}", t.d_chosen);
    }
}
