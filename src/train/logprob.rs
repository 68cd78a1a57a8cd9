//! Summed completion log-probabilities, as TRL computes them: log π(y|x) = Σ over completion
//! tokens t of log_softmax(logits[t-1])[y_t]. Prompt tokens and padding are masked out
//! (shift-by-one: the logits at position t-1 score token t).

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, D};

use crate::model::llama::{ForwardOpts, Llama};
use crate::model::lora::LoraAdapter;

/// One sequence to score: prompt tokens then completion tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    pub prompt: Vec<u32>,
    pub completion: Vec<u32>,
}

impl Sequence {
    pub fn len(&self) -> usize {
        self.prompt.len() + self.completion.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A right-padded batch. Right padding needs no attention mask in a causal model: real tokens
/// never see the padding that follows them.
pub struct Batch {
    /// `[b, seq]` u32
    pub ids: Tensor,
    /// First target position scored (the smallest prompt length in the batch).
    pub start: usize,
    /// `[b, seq - start]`: 1 where the target token at `start + j` is a completion token.
    pub mask: Tensor,
    /// Completion tokens per row.
    pub counts: Vec<usize>,
}

impl Batch {
    pub fn new(rows: &[&Sequence], dtype: DType, device: &Device) -> Result<Batch> {
        if rows.is_empty() {
            bail!("empty batch");
        }
        for r in rows {
            if r.prompt.is_empty() {
                bail!("a sequence has an empty prompt: nothing predicts its first completion token");
            }
            if r.completion.is_empty() {
                bail!("a sequence has an empty completion");
            }
        }
        let seq = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let start = rows.iter().map(|r| r.prompt.len()).min().unwrap_or(1);
        let width = seq - start;
        let mut ids = Vec::with_capacity(rows.len() * seq);
        let mut mask = Vec::with_capacity(rows.len() * width);
        for r in rows {
            ids.extend_from_slice(&r.prompt);
            ids.extend_from_slice(&r.completion);
            ids.extend(std::iter::repeat_n(0u32, seq - r.len()));
            for j in start..seq {
                let is_c = j >= r.prompt.len() && j < r.len();
                mask.push(if is_c { 1f32 } else { 0f32 });
            }
        }
        let ids = Tensor::from_vec(ids, (rows.len(), seq), device)?;
        let mask = Tensor::from_vec(mask, (rows.len(), width), device)?.to_dtype(dtype)?;
        Ok(Batch { ids, start, mask, counts: rows.iter().map(|r| r.completion.len()).collect() })
    }

    pub fn tokens(&self) -> usize {
        self.ids.elem_count()
    }
}

/// Summed completion log-probs `[b]` (model dtype). Differentiable w.r.t. the adapter when it
/// tracks gradients; pass `lora = None` (or a disabled adapter) for the reference model.
pub fn completion_logps(model: &Llama, batch: &Batch, lora: Option<&LoraAdapter>, opts: ForwardOpts) -> Result<Tensor> {
    let hidden = model.forward_hidden(&batch.ids, lora, opts)?;
    let (_, seq, _) = hidden.dims3()?;
    let width = seq - batch.start;
    // Only the positions that predict completion tokens go through the vocabulary projection.
    let h = hidden.narrow(1, batch.start - 1, width)?;
    let mut logits = model.logits(&h)?;
    // Half-precision logits lose too much in a vocab-wide log-softmax: do it in f32.
    if matches!(logits.dtype(), DType::F16 | DType::BF16) {
        logits = logits.to_dtype(DType::F32)?;
    }
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let targets = batch.ids.narrow(1, batch.start, width)?.contiguous()?.unsqueeze(D::Minus1)?;
    let tok = logp.gather(&targets, D::Minus1)?.squeeze(D::Minus1)?;
    Ok((tok * batch.mask.to_dtype(logp.dtype())?)?.sum(1)?)
}

/// Convenience: summed log-probs as f64 values, no gradient kept.
pub fn completion_logps_f64(model: &Llama, batch: &Batch, lora: Option<&LoraAdapter>) -> Result<Vec<f64>> {
    let t = completion_logps(model, batch, lora, ForwardOpts::default())?.detach();
    Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}
