//! LoRA adapters on the seven llama projections, as PEFT defines them:
//! `y = W x + (alpha/r) · B A dropout(x)`, A `[r, in]` Kaiming-uniform (PEFT's `a=√5`, i.e.
//! U(±1/√in)), B `[out, r]` zero, so a fresh adapter leaves the base unchanged.
//!
//! A and B are `candle_core::Var`s so the optimizer can update them in place. Published copies
//! for inference ([`LoraAdapter::snapshot`]) own their own storage and don't track gradients, so
//! training the next day never changes an adapter that inference is using.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use candle_core::{bail, DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::shape::LlamaConfig;
pub use super::shape::LoraTarget;

/// LoRA hyper-parameters (defaults: the original's r16, α32, dropout 0.05, all 7 projections).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<LoraTarget>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig { r: 16, alpha: 32.0, dropout: 0.05, targets: LoraTarget::ALL.to_vec() }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }
}

/// The two low-rank factors of one projection.
#[derive(Clone)]
pub struct LoraPair {
    /// `[r, in]`
    pub a: Var,
    /// `[out, r]`
    pub b: Var,
}

/// An adapter for a whole model: one optional [`LoraPair`] per (layer, target).
pub struct LoraAdapter {
    cfg: LoraConfig,
    layers: Vec<[Option<LoraPair>; 7]>,
    enabled: AtomicBool,
    dropout_on: AtomicBool,
    track_grad: bool,
}

impl LoraAdapter {
    /// A fresh trainable adapter: A Kaiming-uniform from a seeded RNG, B zero.
    pub fn new(cfg: LoraConfig, model: &LlamaConfig, dtype: DType, device: &Device, seed: u64) -> Result<Self> {
        if cfg.r == 0 {
            bail!("LoRA rank must be positive");
        }
        if !(0.0..1.0).contains(&cfg.dropout) {
            bail!("LoRA dropout {} must be in [0, 1)", cfg.dropout);
        }
        let dtype = var_dtype(dtype);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut layers = Vec::with_capacity(model.layers);
        for _ in 0..model.layers {
            let mut row: [Option<LoraPair>; 7] = Default::default();
            for t in LoraTarget::ALL {
                if !cfg.targets.contains(&t) {
                    continue;
                }
                let (fan_in, out) = model.proj_dims(t);
                let bound = 1.0 / (fan_in as f64).sqrt();
                let a: Vec<f64> = (0..cfg.r * fan_in).map(|_| rng.gen_range(-bound..bound)).collect();
                let a = Tensor::from_vec(a, (cfg.r, fan_in), device)?.to_dtype(dtype)?;
                let b = Tensor::zeros((out, cfg.r), dtype, device)?;
                row[t.index()] = Some(LoraPair { a: Var::from_tensor(&a)?, b: Var::from_tensor(&b)? });
            }
            layers.push(row);
        }
        Ok(LoraAdapter::from_layers(cfg, layers, true))
    }

    /// Assemble an adapter from given factors (used by the adapter loader).
    pub fn from_pairs(cfg: LoraConfig, layers: Vec<[Option<LoraPair>; 7]>, trainable: bool) -> Self {
        LoraAdapter::from_layers(cfg, layers, trainable)
    }

    fn from_layers(cfg: LoraConfig, layers: Vec<[Option<LoraPair>; 7]>, track_grad: bool) -> Self {
        LoraAdapter { cfg, layers, enabled: AtomicBool::new(true), dropout_on: AtomicBool::new(false), track_grad }
    }

    pub fn config(&self) -> &LoraConfig {
        &self.cfg
    }
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
    pub fn pair(&self, layer: usize, t: LoraTarget) -> Option<&LoraPair> {
        self.layers.get(layer).and_then(|r| r[t.index()].as_ref())
    }

    /// Off = the base model (the DPO/KTO reference pass).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::SeqCst);
    }
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }
    /// Apply dropout in training-mode forwards (TRL disables it by default).
    pub fn set_dropout(&self, on: bool) {
        self.dropout_on.store(on, Ordering::SeqCst);
    }
    /// Whether a training-mode forward draws dropout masks.
    pub fn dropout_active(&self) -> bool {
        self.dropout_on.load(Ordering::SeqCst) && self.cfg.dropout > 0.0
    }

    /// The trainable variables of one layer, A then B per target.
    pub fn layer_vars(&self, layer: usize) -> impl Iterator<Item = &Var> {
        self.layers.get(layer).into_iter().flat_map(|row| row.iter().flatten().flat_map(|p| [&p.a, &p.b]))
    }

    /// All trainable variables, A then B, layer by layer.
    pub fn vars(&self) -> Vec<Var> {
        let mut v = Vec::new();
        for row in &self.layers {
            for p in row.iter().flatten() {
                v.push(p.a.clone());
                v.push(p.b.clone());
            }
        }
        v
    }

    pub fn num_params(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    /// The LoRA correction for input `x [n, in]`, or `None` when this (layer, target) has none.
    pub fn delta(&self, layer: usize, t: LoraTarget, x: &Tensor, train: bool) -> Result<Option<Tensor>> {
        let Some(p) = self.pair(layer, t) else { return Ok(None) };
        let (a, b) = if self.track_grad {
            (p.a.as_tensor().clone(), p.b.as_tensor().clone())
        } else {
            (p.a.as_detached_tensor(), p.b.as_detached_tensor())
        };
        let xd = x.dtype();
        let a = if a.dtype() != xd { a.to_dtype(xd)? } else { a };
        let b = if b.dtype() != xd { b.to_dtype(xd)? } else { b };
        let x = if train && self.dropout_active() {
            candle_nn::ops::dropout(x, self.cfg.dropout as f32)?
        } else {
            x.clone()
        };
        let d = x.matmul(&a.t()?)?.matmul(&b.t()?)?;
        Ok(Some((d * self.cfg.scale())?))
    }

    /// A frozen deep copy for inference: own storage, no gradient tracking.
    pub fn snapshot(&self) -> Result<LoraAdapter> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for row in &self.layers {
            let mut out: [Option<LoraPair>; 7] = Default::default();
            for (i, p) in row.iter().enumerate() {
                if let Some(p) = p {
                    out[i] = Some(LoraPair {
                        a: Var::from_tensor(&p.a.as_detached_tensor().copy()?)?,
                        b: Var::from_tensor(&p.b.as_detached_tensor().copy()?)?,
                    });
                }
            }
            layers.push(out);
        }
        Ok(LoraAdapter::from_layers(self.cfg.clone(), layers, false))
    }

    /// A frozen copy in f32 on the CPU, for the local inference engine (training may have run on
    /// a GPU, or in half precision).
    pub fn to_cpu_f32(&self) -> Result<LoraAdapter> {
        let cpu = |v: &Var| -> Result<Var> {
            Var::from_tensor(&v.as_detached_tensor().to_device(&Device::Cpu)?.to_dtype(DType::F32)?.copy()?)
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for row in &self.layers {
            let mut out: [Option<LoraPair>; 7] = Default::default();
            for (i, p) in row.iter().enumerate() {
                if let Some(p) = p {
                    out[i] = Some(LoraPair { a: cpu(&p.a)?, b: cpu(&p.b)? });
                }
            }
            layers.push(out);
        }
        Ok(LoraAdapter::from_layers(self.cfg.clone(), layers, false))
    }

    /// A trainable deep copy (to continue training from a loaded or published adapter).
    pub fn trainable_copy(&self) -> Result<LoraAdapter> {
        let mut s = self.snapshot()?;
        s.track_grad = true;
        Ok(s)
    }
}

/// Trainable factors stay f32 when the model runs in half precision (cast on use).
fn var_dtype(model: DType) -> DType {
    match model {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

/// One published adapter: version 0 is the base model (no adapter).
#[derive(Clone, Default)]
pub struct PublishedAdapter {
    pub version: u64,
    pub day: Option<u32>,
    pub adapter: Option<Arc<LoraAdapter>>,
}

/// The adapter inference should use now. The training worker stores a new version atomically;
/// readers take a cheap snapshot of the pointer.
pub struct AdapterSlot {
    inner: ArcSwap<PublishedAdapter>,
}

impl Default for AdapterSlot {
    fn default() -> Self {
        AdapterSlot { inner: ArcSwap::from_pointee(PublishedAdapter::default()) }
    }
}

impl AdapterSlot {
    pub fn new(initial: PublishedAdapter) -> Self {
        AdapterSlot { inner: ArcSwap::from_pointee(initial) }
    }
    pub fn current(&self) -> Arc<PublishedAdapter> {
        self.inner.load_full()
    }
    pub fn version(&self) -> u64 {
        self.inner.load().version
    }
    pub fn publish(&self, p: PublishedAdapter) {
        self.inner.store(Arc::new(p));
    }
}
