//! The assistant's memory: the structured daily memory (never reset across days) plus every past
//! interaction with its embedding, for retrieval of the most relevant ones.

use anyhow::Result;
use chrono::NaiveDateTime;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::clock::fmt_prompt_time;
use crate::config::MemoryLevel;
use crate::memory::structured::Block;
use crate::memory::{Interaction, StructuredMemory};

/// One remembered interaction (the all-time log, `state/assistant_memory.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub step: u64,
    pub time: NaiveDateTime,
    pub text: String,
    pub recommended: bool,
    /// Logged with the record, so a resume needs no embedding calls (logs of earlier versions
    /// lack it; the engine embeds those once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub embedding: Vec<f32>,
}

/// Retrieval weights: relevance dominates; recency favours newer records (the original's recency
/// term was inverted and its importance term constant).
pub const W_RELEVANCE: f32 = 3.0;
pub const W_RECENCY: f32 = 0.5;
pub const RECENCY_DECAY: f32 = 0.995;
/// Records retrieved by similarity (the original's `n_count`); none when the persona is given,
/// where only the most recent interactions are shown.
pub const TOP_K: usize = 3;
/// The running hour gets a summary in a prompt without retrieval once it has more than this many
/// interactions (the original's `len(events_hourly) > 4`).
pub const RUNNING_SUMMARY_AFTER: usize = 4;

/// The text a memory record holds at a memory level: action, suggestion, score, reason.
pub fn record_text(
    level: MemoryLevel,
    user: &str,
    action: &str,
    suggestion: &str,
    score: &str,
    reason: &str,
    rng: &mut ChaCha8Rng,
) -> String {
    let mut t = format!("{user}'s action: {action}");
    if level.includes_suggestion() {
        t.push_str(&format!("\nAssistant's suggestion: {suggestion}"));
    }
    let (p_score, p_reason) = level.score_reason_probability();
    if p_score > 0.0 && (p_score >= 1.0 || rng.gen_bool(p_score)) {
        t.push_str(&format!("\nScore: {score}/4"));
        if p_reason > 0.0 && (p_reason >= 1.0 || rng.gen_bool(p_reason)) {
            t.push_str(&format!(", Reason: {reason}"));
        }
    }
    t
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AssistantMemory {
    pub structured: StructuredMemory,
    #[serde(skip)]
    pub all: Vec<Record>,
}

impl Default for AssistantMemory {
    fn default() -> Self {
        AssistantMemory { structured: StructuredMemory::new(1), all: Vec::new() }
    }
}

impl AssistantMemory {
    /// Indices of the `k` records most relevant to `focal` (cosine), newer ones breaking ties.
    pub fn retrieve(&self, focal: &[f32], k: usize) -> Vec<usize> {
        let n = self.all.len();
        if n == 0 || k == 0 {
            return Vec::new();
        }
        // One pass per record (dot and norm together) and the recency weights by repeated
        // multiplication: this runs every step over a log that grows by ~400 records a day.
        let focal_norm = focal.iter().map(|x| x * x).sum::<f32>().sqrt();
        let rel = relevance(&self.all, focal, focal_norm);
        let mut rec = vec![0f32; n];
        let mut w = 1f32;
        for r in rec.iter_mut().rev() {
            *r = w;
            w *= RECENCY_DECAY;
        }
        let (rel, rec) = (min_max(&rel), min_max(&rec));
        let score: Vec<f32> = rel.iter().zip(&rec).map(|(a, b)| W_RELEVANCE * a + W_RECENCY * b).collect();
        let better = |a: &usize, b: &usize| score[*b].total_cmp(&score[*a]).then(b.cmp(a));
        let mut idx: Vec<usize> = (0..n).collect();
        if k < n {
            idx.select_nth_unstable_by(k, better);
            idx.truncate(k);
        }
        idx.sort_by(better);
        idx
    }

    /// The memory block of the prompt: summaries, this hour, then the retrieved and the most
    /// recent interactions in time order.
    pub fn render(&self, retrieved: &[usize], with_recent: bool) -> String {
        let mut out = self.structured.render();
        let mut picks: Vec<usize> = retrieved.to_vec();
        if with_recent {
            picks.extend(self.all.len().saturating_sub(crate::memory::structured::RECENT)..self.all.len());
        }
        picks.sort_unstable();
        picks.dedup();
        // Entries already shown under "this hour" are not repeated.
        let hour_steps: Vec<u64> = self.structured.hour.iter().map(|i| i.step).collect();
        let extra: Vec<&Record> =
            picks.iter().map(|&i| &self.all[i]).filter(|r| !hour_steps.contains(&r.step)).collect();
        if !extra.is_empty() {
            out.push_str("Related moments:\n");
            for r in extra {
                out.push_str(&format!("{}\n{}\n", fmt_prompt_time(r.time), r.text));
            }
        }
        out
    }

    /// The memory block without retrieval (`memory_retrieval = false`), as the original's
    /// `wo_mem_suggest`: the 4-hourly and hourly summaries and, once the running hour has more
    /// than 4 interactions, its summary (`running`, made by the caller); no raw interactions.
    pub fn render_summaries(&self, running: Option<Block>) -> String {
        let mut s = self.structured.clone();
        s.hour.clear();
        s.recent.clear();
        s.hourly.extend(running);
        s.render()
    }

    /// Whether the running hour is summarized in the prompt: the original re-summarized it on
    /// every step once it held more than 4 interactions.
    pub fn running_hour_summarized(&self) -> bool {
        self.structured.hour.len() > RUNNING_SUMMARY_AFTER
    }

    pub fn push(&mut self, r: Record) {
        self.all.push(r);
    }

    pub fn interaction(r: &Record, score: Option<f64>) -> Interaction {
        Interaction { step: r.step, time: r.time, text: r.text.clone(), recommended: r.recommended, score }
    }
}

/// Each record's cosine similarity to `focal` (0 for vectors of another length: a changed
/// embedding model counts as unrelated). Records go four at a time through
/// [`dot_and_sq_norm4`], whose four independent sums keep the CPU busy where one record's chain
/// of additions would make it wait (late in a run this is most of a step); each record's sums
/// are exactly those of [`dot_and_sq_norm`].
fn relevance(all: &[Record], focal: &[f32], focal_norm: f32) -> Vec<f32> {
    let cos = |(dot, nn): (f32, f32)| if nn == 0.0 { 0.0 } else { dot / (nn.sqrt() * focal_norm) };
    let usable = |r: &Record| r.embedding.len() == focal.len() && focal_norm != 0.0;
    let mut out = Vec::with_capacity(all.len());
    let mut i = 0;
    while i < all.len() {
        if i + 4 <= all.len() && all[i..i + 4].iter().all(usable) {
            let four = [&all[i].embedding[..], &all[i + 1].embedding, &all[i + 2].embedding, &all[i + 3].embedding];
            out.extend(dot_and_sq_norm4(four, focal).map(cos));
            i += 4;
        } else {
            out.push(if usable(&all[i]) { cos(dot_and_sq_norm(&all[i].embedding, focal)) } else { 0.0 });
            i += 1;
        }
    }
    out
}

/// [`dot_and_sq_norm`] of four vectors against one, each `b.len()` long: the same lane
/// arithmetic per vector (so bit for bit the same results), interleaved.
fn dot_and_sq_norm4(a: [&[f32]; 4], b: &[f32]) -> [(f32, f32); 4] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX (checked just above).
        return unsafe { dot_and_sq_norm4_avx(a, b) };
    }
    dot_and_sq_norm4_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn dot_and_sq_norm4_avx(a: [&[f32]; 4], b: &[f32]) -> [(f32, f32); 4] {
    dot_and_sq_norm4_lanes(a, b)
}

#[inline(always)]
fn dot_and_sq_norm4_lanes(a: [&[f32]; 4], b: &[f32]) -> [(f32, f32); 4] {
    const L: usize = 8;
    assert!(a.iter().all(|x| x.len() == b.len()), "vectors of one length");
    let (mut dot, mut sq) = ([[0f32; L]; 4], [[0f32; L]; 4]);
    let full = b.len() / L * L;
    let mut c = 0;
    while c < full {
        let y = &b[c..c + L];
        for r in 0..4 {
            let x = &a[r][c..c + L];
            for i in 0..L {
                dot[r][i] += x[i] * y[i];
                sq[r][i] += x[i] * x[i];
            }
        }
        c += L;
    }
    let mut out = [(0f32, 0f32); 4];
    for r in 0..4 {
        let (mut d, mut n) = (dot[r].iter().sum::<f32>(), sq[r].iter().sum::<f32>());
        for (x, y) in a[r][full..].iter().zip(&b[full..]) {
            d += x * y;
            n += x * x;
        }
        out[r] = (d, n);
    }
    out
}

/// `(a·b, |a|²)` in eight independent lanes, which the compiler turns into SIMD (a single
/// running sum cannot be reordered, so it stays scalar). Retrieval runs this over every record
/// each step, and the records grow by ~400 a day.
fn dot_and_sq_norm(a: &[f32], b: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX (checked just above).
        return unsafe { dot_and_sq_norm_avx(a, b) };
    }
    dot_and_sq_norm_lanes(a, b)
}

/// The same lane arithmetic compiled with AVX, so the eight lanes fill one 256-bit register
/// instead of two SSE ones: every lane does the same IEEE multiplications and additions in the
/// same order (no fused multiply-add), so the result is bit for bit the portable one. Retrieval
/// is most of a late day's step (this runs over every past interaction, every awake step).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn dot_and_sq_norm_avx(a: &[f32], b: &[f32]) -> (f32, f32) {
    dot_and_sq_norm_lanes(a, b)
}

#[inline(always)]
fn dot_and_sq_norm_lanes(a: &[f32], b: &[f32]) -> (f32, f32) {
    const L: usize = 8;
    let (mut dot, mut sq) = ([0f32; L], [0f32; L]);
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..L {
            dot[i] += x[i] * y[i];
            sq[i] += x[i] * x[i];
        }
    }
    let (mut d, mut n) = (dot.iter().sum::<f32>(), sq.iter().sum::<f32>());
    for (x, y) in ra.iter().zip(rb) {
        d += x * y;
        n += x * x;
    }
    (d, n)
}

fn min_max(v: &[f32]) -> Vec<f32> {
    let (lo, hi) = v.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
    if (hi - lo).abs() < 1e-12 {
        vec![0.5; v.len()]
    } else {
        v.iter().map(|x| (x - lo) / (hi - lo)).collect()
    }
}

pub fn load_log(path: &std::path::Path, before_step: u64) -> Result<Vec<Record>> {
    Ok(crate::storage::read_jsonl::<Record>(path)?.into_iter().filter(|r| r.step < before_step).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rec(step: u64, e: Vec<f32>) -> Record {
        Record {
            step,
            time: chrono::NaiveDate::from_ymd_opt(2025, 2, 13).unwrap().and_hms_opt(8, 0, 0).unwrap(),
            text: format!("r{step}"),
            recommended: true,
            embedding: e,
        }
    }

    #[test]
    fn four_at_a_time_is_bit_for_bit_one_at_a_time() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for len in [0usize, 3, 8, 13, 256, 387] {
            let focal: Vec<f32> = (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let fnorm = focal.iter().map(|x| x * x).sum::<f32>().sqrt();
            let mut all: Vec<Record> =
                (0..11).map(|s| rec(s, (0..len).map(|_| rng.gen_range(-2.0f32..2.0)).collect())).collect();
            all[6].embedding.pop();
            all[9].embedding = vec![0.0; len];
            let one: Vec<f32> = all
                .iter()
                .map(|r| {
                    if r.embedding.len() != focal.len() || fnorm == 0.0 {
                        return 0.0;
                    }
                    let (d, n) = dot_and_sq_norm(&r.embedding, &focal);
                    if n == 0.0 {
                        0.0
                    } else {
                        d / (n.sqrt() * fnorm)
                    }
                })
                .collect();
            let four = relevance(&all, &focal, fnorm);
            assert_eq!(
                one.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                four.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{len}"
            );
        }
    }

    #[test]
    fn lane_sums_match_plain_sums() {
        let a: Vec<f32> = (0..21).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..21).map(|i| (i as f32 * 0.11).cos()).collect();
        let (d, n) = dot_and_sq_norm(&a, &b);
        let d0: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let n0: f32 = a.iter().map(|x| x * x).sum();
        assert!((d - d0).abs() < 1e-5 && (n - n0).abs() < 1e-5, "{d} {d0} {n} {n0}");
        // The AVX build of the lanes gives the portable result bit for bit (runs stay
        // reproducible across machines).
        for len in [0, 7, 8, 256, 384, 1001] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.731).sin() * 1e3).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.113).cos() / 7.0).collect();
            let (x, y) = (dot_and_sq_norm(&a, &b), dot_and_sq_norm_lanes(&a, &b));
            assert_eq!((x.0.to_bits(), x.1.to_bits()), (y.0.to_bits(), y.1.to_bits()), "length {len}");
        }
    }

    #[test]
    fn retrieval_prefers_relevant_then_recent() {
        let mut m = AssistantMemory::default();
        m.push(rec(0, vec![1.0, 0.0]));
        m.push(rec(1, vec![0.0, 1.0]));
        m.push(rec(2, vec![1.0, 0.0]));
        let got = m.retrieve(&[1.0, 0.0], 2);
        assert_eq!(got, vec![2, 0], "both relevant, the newer first");
        assert_eq!(m.retrieve(&[0.0, 1.0], 1), vec![1]);
    }

    #[test]
    fn memory_levels_change_record_text() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let a = record_text(MemoryLevel::A, "Ana", "cooking", "Add salt", "3.0", "good", &mut rng);
        let asx = record_text(MemoryLevel::As, "Ana", "cooking", "Add salt", "3.0", "good", &mut rng);
        let ascr = record_text(MemoryLevel::Ascr, "Ana", "cooking", "Add salt", "3.0", "good", &mut rng);
        assert!(!a.contains("Add salt"));
        assert!(asx.contains("Add salt") && !asx.contains("Score"));
        assert!(ascr.contains("Score: 3.0/4") && ascr.contains("Reason: good"));
    }
}
