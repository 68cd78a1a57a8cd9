//! AdamW (PyTorch semantics), a linear-decay schedule, global-norm gradient clipping and gradient
//! accumulation: the pieces HF Trainer combines for the original's DPO/KTO runs.
//! We write them ourselves because candle's `AdamW` neither clips nor accumulates.

use anyhow::{bail, Result};
use candle_core::{backprop::GradStore, DType, Tensor, Var};

/// AdamW settings (HF defaults: β 0.9/0.999, ε 1e-8, weight decay 0).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 5e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// AdamW over a fixed list of variables; moments are kept in f32 (or f64 for f64 vars).
pub struct AdamW {
    cfg: AdamWConfig,
    vars: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: u64,
}

impl AdamW {
    pub fn new(vars: Vec<Var>, cfg: AdamWConfig) -> Result<Self> {
        let mut m = Vec::with_capacity(vars.len());
        let mut v = Vec::with_capacity(vars.len());
        for var in &vars {
            m.push(var.as_tensor().zeros_like()?.detach());
            v.push(var.as_tensor().zeros_like()?.detach());
        }
        Ok(AdamW { cfg, vars, m, v, t: 0 })
    }

    pub fn steps(&self) -> u64 {
        self.t
    }

    /// One update with learning rate `lr` from gradients aligned with the variables.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        if grads.len() != self.vars.len() {
            bail!("AdamW got {} gradients for {} variables", grads.len(), self.vars.len());
        }
        self.t += 1;
        let c = &self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        for (i, grad) in grads.iter().enumerate() {
            let g = grad.to_dtype(self.m[i].dtype())?;
            let m = ((&self.m[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let mhat = (&m / bc1)?;
            let vhat = (&v / bc2)?;
            let theta = self.vars[i].as_detached_tensor();
            let decayed = if c.weight_decay != 0.0 { (&theta * (1.0 - lr * c.weight_decay))? } else { theta };
            let upd = (mhat / (vhat.sqrt()? + c.eps)?)?;
            let next = (decayed - (upd * lr)?)?;
            self.vars[i].set(&next)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }
}

/// HF's `get_linear_schedule_with_warmup` with no warmup: step k (0-based) uses
/// `lr · (total − k) / total`, reaching 0 after the last step.
pub fn linear_lr(base: f64, step: u64, total: u64) -> f64 {
    if total == 0 {
        return base;
    }
    base * (total.saturating_sub(step)) as f64 / total as f64
}

/// Sums gradients of several micro-batches for a fixed variable list.
pub struct GradAccumulator {
    vars: Vec<Var>,
    sums: Vec<Option<Tensor>>,
    micro: usize,
}

impl GradAccumulator {
    pub fn new(vars: Vec<Var>) -> Self {
        let n = vars.len();
        GradAccumulator { vars, sums: vec![None; n], micro: 0 }
    }

    /// Add one backward pass's gradients (vars without a gradient count as zero).
    pub fn add(&mut self, grads: &GradStore) -> Result<()> {
        for (i, var) in self.vars.iter().enumerate() {
            if let Some(g) = grads.get(var.as_tensor()) {
                let g = g.detach();
                self.sums[i] = Some(match self.sums[i].take() {
                    Some(s) => (s + g)?,
                    None => g,
                });
            }
        }
        self.micro += 1;
        Ok(())
    }

    pub fn micro_batches(&self) -> usize {
        self.micro
    }

    /// The mean gradient over the accumulated micro-batches, clipped to global L2 norm
    /// `max_norm` (like `clip_grad_norm_`); returns the gradients and the pre-clip norm.
    pub fn take_mean_clipped(&mut self, max_norm: Option<f64>) -> Result<(Vec<Tensor>, f64)> {
        if self.micro == 0 {
            bail!("no gradients accumulated");
        }
        let n = self.micro as f64;
        let mut grads = Vec::with_capacity(self.vars.len());
        for (i, var) in self.vars.iter().enumerate() {
            let g = match self.sums[i].take() {
                Some(s) => (s / n)?,
                None => var.as_tensor().zeros_like()?.detach(),
            };
            grads.push(g);
        }
        self.micro = 0;
        let mut sq = 0f64;
        for g in &grads {
            sq += g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        }
        let norm = sq.sqrt();
        if !norm.is_finite() {
            bail!("gradient norm is not finite ({norm})");
        }
        if let Some(max) = max_norm {
            let coef = max / (norm + 1e-6);
            if coef < 1.0 {
                grads = grads.into_iter().map(|g| g * coef).collect::<candle_core::Result<_>>()?;
            }
        }
        Ok((grads, norm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_decays_linearly_to_zero() {
        assert_eq!(linear_lr(1.0, 0, 4), 1.0);
        assert_eq!(linear_lr(1.0, 3, 4), 0.25);
        assert_eq!(linear_lr(1.0, 4, 4), 0.0);
    }

    #[test]
    fn adamw_first_step_moves_by_lr_against_the_gradient_sign() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::new(&[1.0f64, -2.0], &dev)?)?;
        let mut opt = AdamW::new(vec![x.clone()], AdamWConfig { lr: 0.1, ..Default::default() })?;
        opt.step(&[Tensor::new(&[3.0f64, -0.5], &dev)?], 0.1)?;
        let v = x.as_tensor().to_vec1::<f64>()?;
        assert!((v[0] - 0.9).abs() < 1e-6, "{v:?}");
        assert!((v[1] + 1.9).abs() < 1e-6, "{v:?}");
        Ok(())
    }

    #[test]
    fn clipping_scales_to_max_norm() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::new(&[0.0f64, 0.0], &dev)?)?;
        let loss = (x.as_tensor() * &Tensor::new(&[3.0f64, 4.0], &dev)?)?.sum_all()?;
        let mut acc = GradAccumulator::new(vec![x.clone()]);
        acc.add(&loss.backward()?)?;
        acc.add(&loss.backward()?)?;
        let (g, norm) = acc.take_mean_clipped(Some(1.0))?;
        assert!((norm - 5.0).abs() < 1e-9);
        let g = g[0].to_vec1::<f64>()?;
        assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6, "{g:?}");
        Ok(())
    }
}
