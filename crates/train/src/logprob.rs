//! Summed completion log-probabilities, as TRL computes them: log π(y|x) = Σ over completion
//! tokens t of log_softmax(logits[t-1])[y_t]. Prompt tokens and padding are masked out
//! (shift-by-one: the logits at position t-1 score token t).
//!
//! Rows are packed: a prompt computed once can carry several completions ([`Batch::pairs`]).

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, D};

use crate::model::llama::{ForwardOpts, Llama, Packing, PAD_SEGMENT};
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

/// A right-padded batch of rows, each a prompt followed by one or more completions that are
/// scored as if each were alone after the prompt ([`Packing`]). A DPO pair is one row (prompt,
/// chosen, rejected): the prompt, most of the tokens, goes through the model once instead of
/// twice. Padding follows the real tokens and is never read by them.
pub struct Batch {
    /// `[b, seq]` u32
    pub ids: Tensor,
    pub packing: Packing,
    /// Flat positions (`row * seq + i`) whose logits predict the completion tokens, `[n]`.
    pred: Tensor,
    /// The predicted tokens, `[n, 1]`.
    targets: Tensor,
    /// `[completions, n]`: 1 where target j belongs to completion i.
    owner: Tensor,
    /// Tokens per completion, in output order.
    pub counts: Vec<usize>,
}

impl Batch {
    /// One row per sequence (prompt + completion). Log-probs come out in row order.
    pub fn new(rows: &[&Sequence], dtype: DType, device: &Device) -> Result<Batch> {
        let rows: Vec<(&[u32], Vec<&[u32]>)> =
            rows.iter().map(|r| (r.prompt.as_slice(), vec![r.completion.as_slice()])).collect();
        Batch::packed(&rows, dtype, device)
    }

    /// Chosen/rejected pairs. Log-probs come out as chosen₀, rejected₀, chosen₁, … A pair whose
    /// two prompts are equal (always, unless truncation cut them differently) is one row.
    pub fn pairs(pairs: &[(&Sequence, &Sequence)], dtype: DType, device: &Device) -> Result<Batch> {
        let mut rows: Vec<(&[u32], Vec<&[u32]>)> = Vec::new();
        for (c, r) in pairs {
            if c.prompt == r.prompt {
                rows.push((c.prompt.as_slice(), vec![c.completion.as_slice(), r.completion.as_slice()]));
            } else {
                rows.push((c.prompt.as_slice(), vec![c.completion.as_slice()]));
                rows.push((r.prompt.as_slice(), vec![r.completion.as_slice()]));
            }
        }
        Batch::packed(&rows, dtype, device)
    }

    /// Rows of (prompt, completions). Log-probs come out row by row, completions in order.
    pub fn packed(rows: &[(&[u32], Vec<&[u32]>)], dtype: DType, device: &Device) -> Result<Batch> {
        if rows.is_empty() {
            bail!("empty batch");
        }
        for (prompt, comps) in rows {
            if prompt.is_empty() {
                bail!("a sequence has an empty prompt: nothing predicts its first completion token");
            }
            if comps.is_empty() || comps.iter().any(|c| c.is_empty()) {
                bail!("a sequence has an empty completion");
            }
        }
        let row_len = |(p, cs): &(&[u32], Vec<&[u32]>)| p.len() + cs.iter().map(|c| c.len()).sum::<usize>();
        let seq = rows.iter().map(row_len).max().unwrap_or(0);
        let (b, n_comp) = (rows.len(), rows.iter().map(|(_, cs)| cs.len()).sum::<usize>());
        let mut ids = Vec::with_capacity(b * seq);
        let mut positions = Vec::with_capacity(b * seq);
        let mut segments = Vec::with_capacity(b * seq);
        let (mut pred, mut targets, mut owner_of, mut counts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (r, (prompt, comps)) in rows.iter().enumerate() {
            let base = r * seq;
            ids.extend_from_slice(prompt);
            positions.extend(0..prompt.len() as u32);
            segments.extend(std::iter::repeat_n(0u32, prompt.len()));
            for (k, c) in comps.iter().enumerate() {
                let start = ids.len() - base;
                for (t, &tok) in c.iter().enumerate() {
                    // The first token is predicted by the prompt's last, the others by their
                    // predecessor in the completion.
                    let from = if t == 0 { prompt.len() - 1 } else { start + t - 1 };
                    pred.push((base + from) as u32);
                    targets.push(tok);
                    owner_of.push(counts.len());
                }
                ids.extend_from_slice(c);
                positions.extend(prompt.len() as u32..(prompt.len() + c.len()) as u32);
                segments.extend(std::iter::repeat_n(k as u32 + 1, c.len()));
                counts.push(c.len());
            }
            let used = ids.len() - base;
            ids.extend(std::iter::repeat_n(0u32, seq - used));
            positions.extend(used as u32..seq as u32);
            segments.extend(std::iter::repeat_n(PAD_SEGMENT, seq - used));
        }
        let n = targets.len();
        let mut owner = vec![0f32; n_comp * n];
        for (j, &i) in owner_of.iter().enumerate() {
            owner[i * n + j] = 1.0;
        }
        Ok(Batch {
            ids: Tensor::from_vec(ids, (b, seq), device)?,
            packing: Packing { rows: b, len: seq, positions, segments },
            pred: Tensor::from_vec(pred, n, device)?,
            targets: Tensor::from_vec(targets, (n, 1), device)?,
            owner: Tensor::from_vec(owner, (n_comp, n), device)?.to_dtype(dtype)?,
            counts,
        })
    }

    /// Tokens through the model (padding included).
    pub fn tokens(&self) -> usize {
        self.ids.elem_count()
    }

    /// Summed completion log-probs `[completions]` from the batch's final hidden states.
    fn logps_from_hidden(&self, model: &Llama, hidden: &Tensor) -> Result<Tensor> {
        let (b, s, h) = hidden.dims3()?;
        // Only the positions that predict completion tokens go through the vocabulary projection.
        let rows = hidden.reshape((b * s, h))?.index_select(&self.pred, 0)?;
        let mut logits = model.logits(&rows)?;
        // Half-precision logits lose too much in a vocab-wide log-softmax: do it in f32.
        if matches!(logits.dtype(), DType::F16 | DType::BF16) {
            logits = logits.to_dtype(DType::F32)?;
        }
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let tok = logp.gather(&self.targets, D::Minus1)?; // [n, 1]
        Ok(self.owner.to_dtype(tok.dtype())?.matmul(&tok)?.squeeze(1)?)
    }
}

/// Summed completion log-probs (model dtype), one per completion in the batch's order.
/// Differentiable w.r.t. the adapter when it tracks gradients; pass `lora = None` (or a
/// disabled adapter) for the reference model.
pub fn completion_logps(model: &Llama, batch: &Batch, lora: Option<&LoraAdapter>, opts: ForwardOpts) -> Result<Tensor> {
    let hidden = model.forward_packed(&batch.ids, &batch.packing, lora, opts)?;
    batch.logps_from_hidden(model, &hidden)
}

/// Convenience: summed log-probs as f64 values, no gradient kept.
pub fn completion_logps_f64(model: &Llama, batch: &Batch, lora: Option<&LoraAdapter>) -> Result<Vec<f64>> {
    let t = completion_logps(model, batch, lora, ForwardOpts::default())?.detach();
    Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

/// The adapter's gradients of `Σ cᵢ · logπ(completionᵢ)`, where `coefs` turns the log-probs into
/// the cᵢ (a loss's derivatives with respect to them: DPO and KTO are scalar functions of the
/// summed log-probs, so their gradients are those of this surrogate). Returns the gradients and
/// the log-probs. `checkpoint` recomputes each layer in the backward instead of keeping its
/// activations (see [`Llama::packed_grads_checkpointed`]).
pub fn completion_grads(
    model: &Llama,
    batch: &Batch,
    adapter: &LoraAdapter,
    checkpoint: bool,
    coefs: impl FnOnce(&[f64]) -> Result<Vec<f64>>,
) -> Result<(GradStore, Vec<f64>)> {
    let opts = ForwardOpts { train: true };
    let surrogate = |logps: Tensor| -> Result<(Tensor, Vec<f64>)> {
        let vals: Vec<f64> = logps.detach().to_dtype(DType::F64)?.to_vec1()?;
        let c = coefs(&vals)?;
        let c = Tensor::from_vec(c, vals.len(), logps.device())?.to_dtype(logps.dtype())?;
        Ok(((logps * c)?.sum_all()?, vals))
    };
    if checkpoint {
        model.packed_grads_checkpointed(&batch.ids, &batch.packing, adapter, opts, |hidden| {
            surrogate(batch.logps_from_hidden(model, hidden)?)
        })
    } else {
        let (s, vals) = surrogate(completion_logps(model, batch, Some(adapter), opts)?)?;
        Ok((s.backward()?, vals))
    }
}
