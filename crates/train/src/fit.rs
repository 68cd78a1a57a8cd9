//! The optimisation loop that DPO and KTO share: epochs of micro-batches, gradient accumulation,
//! clipping, AdamW on TRL's linear schedule, and one [`StepMetrics`] per optimizer step. A loss
//! supplies what differs ([`Objective`]): what a micro-batch is, in which order they come, and
//! the gradient of one.

use std::time::Instant;

use anyhow::Result;
use candle_core::backprop::GradStore;

use super::optim::{linear_lr, AdamW, GradAccumulator};
use super::{StepMetrics, TrainConfig, TrainSummary};
use crate::model::lora::LoraAdapter;

/// One preference loss, as the loop drives it.
pub(crate) trait Objective {
    type Micro;
    /// The micro-batches of one epoch, in training order (the same count every epoch).
    fn micro_batches(&mut self, epoch: usize) -> Vec<Self::Micro>;
    /// The gradient of one micro-batch's loss; its loss terms and rewards go into `stats`.
    fn grads(&mut self, micro: &Self::Micro, stats: &mut StepStats) -> Result<GradStore>;
}

/// Running sums over the micro-batches of one optimizer step.
#[derive(Default)]
pub(crate) struct StepStats {
    /// Sum of the loss terms, and how many the step's loss averages (DPO: pairs; KTO:
    /// micro-batches, each already a mean over its examples).
    pub loss: f64,
    pub terms: usize,
    /// β·(logπ − logπ_ref) of each chosen (desirable) and rejected (undesirable) completion.
    pub chosen: Vec<f64>,
    pub rejected: Vec<f64>,
    /// DPO: pairs compared, and those with a positive margin.
    pub pairs: usize,
    pub correct: usize,
    /// KTO: the sum of each micro-batch's KL estimate z₀.
    pub kl: f64,
    pub tokens: usize,
}

impl StepStats {
    fn finish(&self, step: u64, epoch: usize, lr: f64, grad_norm: f64, secs: f64, elapsed: f64) -> StepMetrics {
        let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
        let k = self.terms.max(1) as f64;
        StepMetrics {
            step,
            epoch,
            loss: self.loss / k,
            lr,
            grad_norm,
            rewards_chosen: mean(&self.chosen),
            rewards_rejected: mean(&self.rejected),
            reward_margin: mean(&self.chosen) - mean(&self.rejected),
            reward_accuracy: self.correct as f64 / self.pairs.max(1) as f64,
            kl: self.kl / k,
            tokens: self.tokens,
            tokens_per_s: if secs > 0.0 { self.tokens as f64 / secs } else { 0.0 },
            elapsed_s: elapsed,
        }
    }
}

/// Train `adapter` for `cfg.epochs` epochs of `objective`'s micro-batches, stepping the optimizer
/// every `cfg.grad_accum` of them and at the end of each epoch. `summary` comes with what was done
/// before the loop (examples, reference time); `t0` is when the run started.
pub(crate) fn fit<O: Objective>(
    adapter: &LoraAdapter,
    cfg: &TrainConfig,
    objective: &mut O,
    micro_per_epoch: usize,
    mut summary: TrainSummary,
    t0: Instant,
    on_step: &mut dyn FnMut(&StepMetrics) -> Result<()>,
) -> Result<TrainSummary> {
    let total = (micro_per_epoch.div_ceil(cfg.grad_accum) * cfg.epochs) as u64;
    let vars = adapter.vars();
    let mut opt = AdamW::new(vars.clone(), cfg.adam.clone())?;
    let mut acc = GradAccumulator::new(vars);
    let mut stats = StepStats::default();
    let mut step_start = Instant::now();
    for epoch in 0..cfg.epochs {
        let micros = objective.micro_batches(epoch);
        for (mi, micro) in micros.iter().enumerate() {
            let grads = objective.grads(micro, &mut stats)?;
            acc.add(&grads)?;
            if acc.micro_batches() == cfg.grad_accum || mi + 1 == micros.len() {
                let lr = linear_lr(cfg.adam.lr, opt.steps(), total);
                let (grads, norm) = acc.take_mean_clipped(cfg.max_grad_norm)?;
                opt.step(&grads, lr)?;
                let secs = step_start.elapsed().as_secs_f64();
                let m = stats.finish(opt.steps(), epoch, lr, norm, secs, t0.elapsed().as_secs_f64());
                if summary.steps == 0 {
                    summary.first_loss = m.loss;
                }
                summary.steps = opt.steps();
                summary.last_loss = m.loss;
                summary.tokens += m.tokens;
                on_step(&m)?;
                stats = StepStats::default();
                step_start = Instant::now();
            }
        }
    }
    summary.seconds = t0.elapsed().as_secs_f64();
    Ok(summary)
}

/// CPU time (user + system) this process has used, from `/proc/self/stat` (Linux only). On a
/// shared machine it is a fairer speed measure than wall time.
pub fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}
