//! Next-token sampling in the order Hugging Face `generate` applies its logits processors:
//! repetition penalty (over prompt + generated tokens), temperature, top-k, top-p. Temperature 0
//! (or below) is greedy. The RNG is ChaCha seeded per request, so a seed fixes the output.

use std::collections::HashSet;

use rand::Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Seed used when neither the request nor the role config gives one: runs stay reproducible.
pub const DEFAULT_SEED: u64 = 0x5EED_2024;

/// Generation settings for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f64,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f64,
    /// 1.0 = off; HF semantics (positive logits divided, negative multiplied).
    pub repeat_penalty: f64,
    pub max_new_tokens: usize,
    pub seed: u64,
}

/// Defaults for settings a role leaves out. The repetition penalty is off (1.0), as in Hugging
/// Face's `generate` and llama.cpp and as the OpenAI-compatible servers apply when the request
/// names none: with the 1.1 this used to be, a role set to `temperature = 0` did not decode
/// greedily at all (SmolLM2's answers left PyTorch's greedy ones after 1–7 tokens, with
/// identical prompt ids; `tests/prompt_parity.rs`). Set `repeat_penalty` in the role to use one.
impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.7,
            top_k: 50,
            top_p: 0.9,
            repeat_penalty: 1.0,
            max_new_tokens: 256,
            seed: DEFAULT_SEED,
        }
    }
}

/// Draws tokens for one generation.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Sampler { params, rng }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Pick the next token from `logits` (one per vocabulary entry); `history` is prompt plus
    /// generated tokens, for the repetition penalty.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let mut l: Vec<f32> = logits.to_vec();
        apply_repeat_penalty(&mut l, history, self.params.repeat_penalty);
        if self.params.temperature <= 0.0 {
            return argmax(&l);
        }
        let t = self.params.temperature as f32;
        l.iter_mut().for_each(|x| *x /= t);
        let mut cand = candidates(&l, self.params.top_k, self.params.top_p);
        // Renormalize over the survivors and draw.
        let total: f32 = cand.iter().map(|(_, p)| p).sum();
        if total.is_nan() || total <= 0.0 || !total.is_finite() {
            return argmax(&l);
        }
        cand.iter_mut().for_each(|(_, p)| *p /= total);
        let mut u: f32 = self.rng.gen::<f32>();
        for (id, p) in &cand {
            if u < *p {
                return *id;
            }
            u -= p;
        }
        cand.last().map(|(id, _)| *id).unwrap_or_else(|| argmax(&l))
    }
}

/// HF `RepetitionPenaltyLogitsProcessor`: each distinct seen token once.
pub fn apply_repeat_penalty(logits: &mut [f32], history: &[u32], penalty: f64) {
    if (penalty - 1.0).abs() < f64::EPSILON || penalty <= 0.0 {
        return;
    }
    let p = penalty as f32;
    let seen: HashSet<u32> = history.iter().copied().collect();
    for id in seen {
        if let Some(x) = logits.get_mut(id as usize) {
            *x = if *x < 0.0 { *x * p } else { *x / p };
        }
    }
}

pub fn argmax(l: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut bv = f32::NEG_INFINITY;
    for (i, &x) in l.iter().enumerate() {
        if x > bv {
            bv = x;
            best = i;
        }
    }
    best as u32
}

/// Top-k by logit, softmax over the survivors (as HF's top-k warper masks the rest to -inf),
/// then the smallest prefix whose mass reaches top-p (at least one token kept). Returns
/// (id, probability) sorted by probability, descending; probabilities sum to 1 before top-p.
pub fn candidates(scaled_logits: &[f32], top_k: usize, top_p: f64) -> Vec<(u32, f32)> {
    let mut c: Vec<(u32, f32)> = scaled_logits.iter().enumerate().map(|(i, &x)| (i as u32, x)).collect();
    let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if top_k > 0 && top_k < c.len() {
        // Partial selection keeps this O(vocab) rather than a full sort of ~50k entries.
        c.select_nth_unstable_by(top_k - 1, by_logit_desc);
        c.truncate(top_k);
    }
    c.sort_by(by_logit_desc);
    let max = c.first().map(|x| x.1).unwrap_or(0.0);
    c.iter_mut().for_each(|x| x.1 = (x.1 - max).exp());
    let z: f32 = c.iter().map(|x| x.1).sum();
    c.iter_mut().for_each(|x| x.1 /= z);
    if top_p < 1.0 {
        let mut cum = 0.0f32;
        let mut keep = 0;
        for (_, p) in &c {
            keep += 1;
            cum += p;
            if cum as f64 >= top_p {
                break;
            }
        }
        c.truncate(keep.max(1));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeat_penalty_follows_hf_sign_rule() {
        let mut l = vec![2.0, -2.0, 1.0];
        apply_repeat_penalty(&mut l, &[0, 1, 1], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn greedy_at_zero_temperature() {
        let mut s = Sampler::new(SamplingParams { temperature: 0.0, ..Default::default() });
        assert_eq!(s.sample(&[0.1, 3.0, 2.9], &[]), 1);
        // The penalty applies before the argmax.
        let mut s = Sampler::new(SamplingParams { temperature: 0.0, repeat_penalty: 2.0, ..Default::default() });
        assert_eq!(s.sample(&[0.1, 3.0, 2.9], &[1]), 2);
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        let l = [3.0f32, 2.0, 1.0, 0.0];
        assert_eq!(candidates(&l, 2, 1.0).len(), 2);
        // p(0) ≈ 0.644, p(1) ≈ 0.237: 0.5 keeps one, 0.8 keeps two.
        assert_eq!(candidates(&l, 0, 0.5).iter().map(|c| c.0).collect::<Vec<_>>(), vec![0]);
        assert_eq!(candidates(&l, 0, 0.8).len(), 2);
        // Top-p acts on the top-k renormalized mass: among {3, 2}, p(0) ≈ 0.731 ≥ 0.7.
        assert_eq!(candidates(&l, 2, 0.7).len(), 1);
        assert_eq!(candidates(&l, 0, 0.7).len(), 2);
    }

    #[test]
    fn same_seed_same_draws_and_seeds_differ() {
        let l: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.1).collect();
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                repeat_penalty: 1.0,
                seed,
                max_new_tokens: 1,
            });
            (0..32).map(|_| s.sample(&l, &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }
}
