//! The assistant's memory: the structured daily memory (never reset across days) plus every past
//! interaction with its embedding, for retrieval of the most relevant ones.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

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
    /// Every past interaction, oldest first (the engine keeps them in a log, not the checkpoint).
    #[serde(skip)]
    all: Vec<Record>,
    /// The distinct vectors of `all`, kept beside it.
    #[serde(skip)]
    distinct: Distinct,
}

impl Default for AssistantMemory {
    fn default() -> Self {
        AssistantMemory { structured: StructuredMemory::new(1), all: Vec::new(), distinct: Distinct::default() }
    }
}

impl AssistantMemory {
    /// Indices of the `k` records most relevant to `focal` (cosine), newer ones breaking ties.
    pub fn retrieve(&self, focal: &[f32], k: usize) -> Vec<usize> {
        let n = self.all.len();
        if n == 0 || k == 0 {
            return Vec::new();
        }
        // The recency weights by repeated multiplication rather than a power per record.
        let focal_norm = focal.iter().map(|x| x * x).sum::<f32>().sqrt();
        let rel = relevance(&self.all, &self.distinct, focal, focal_norm);
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

    /// Every past interaction, oldest first.
    pub fn records(&self) -> &[Record] {
        &self.all
    }

    pub fn push(&mut self, r: Record) {
        self.all.push(r);
        self.distinct.add(&self.all, self.all.len() - 1);
    }

    /// Replace every past interaction (a resume reading the log).
    pub fn set_records(&mut self, all: Vec<Record>) {
        self.distinct = Distinct::of(&all);
        self.all = all;
    }

    pub fn interaction(r: &Record, score: Option<f64>) -> Interaction {
        Interaction { step: r.step, time: r.time, text: r.text.clone(), recommended: r.recommended, score }
    }
}

/// The distinct vectors among the records. Retrieval runs every awake step over a log that
/// grows by ~400 records a day, and the same texts recur all day ("walking", "No
/// Recommendation"), so it computes one dot product per distinct vector, with its norm known.
#[derive(Debug, Clone, Default, PartialEq)]
struct Distinct {
    /// A record holding each distinct vector.
    reps: Vec<usize>,
    /// `|v|²` of each distinct vector.
    sq_norms: Vec<f32>,
    /// Each record's distinct vector.
    of: Vec<u32>,
    /// Distinct vectors by a hash of their bits.
    by_hash: HashMap<u64, Vec<u32>>,
}

impl Distinct {
    fn of(all: &[Record]) -> Distinct {
        let mut d = Distinct::default();
        for i in 0..all.len() {
            d.add(all, i);
        }
        d
    }

    /// Take in record `i`, the next one.
    fn add(&mut self, all: &[Record], i: usize) {
        let v = &all[i].embedding;
        let mut h = std::hash::DefaultHasher::new();
        for x in v {
            x.to_bits().hash(&mut h);
        }
        let same = |a: &[f32]| a.len() == v.len() && a.iter().zip(v).all(|(x, y)| x.to_bits() == y.to_bits());
        let ids = self.by_hash.entry(h.finish()).or_default();
        let id = match ids.iter().find(|&&id| same(&all[self.reps[id as usize]].embedding)) {
            Some(&id) => id,
            None => {
                let id = self.reps.len() as u32;
                self.reps.push(i);
                self.sq_norms.push(sq_norm(v));
                ids.push(id);
                id
            }
        };
        self.of.push(id);
    }
}

/// Each record's cosine similarity to `focal` (0 for vectors of another length: a changed
/// embedding model counts as unrelated). Distinct vectors go four at a time through [`dot4`],
/// whose four independent sums keep the CPU busy where one vector's chain of additions would
/// make it wait; each sum is exactly that of [`dot`].
fn relevance(all: &[Record], distinct: &Distinct, focal: &[f32], focal_norm: f32) -> Vec<f32> {
    let vector = |j: usize| &all[distinct.reps[j]].embedding[..];
    let cos = |j: usize, d: f32| {
        let nn = distinct.sq_norms[j];
        if nn == 0.0 {
            0.0
        } else {
            d / (nn.sqrt() * focal_norm)
        }
    };
    let usable = |j: usize| vector(j).len() == focal.len() && focal_norm != 0.0;
    let n = distinct.reps.len();
    let mut per = Vec::with_capacity(n);
    let mut j = 0;
    while j < n {
        if j + 4 <= n && (j..j + 4).all(usable) {
            let dots = dot4([vector(j), vector(j + 1), vector(j + 2), vector(j + 3)], focal);
            per.extend((0..4).map(|r| cos(j + r, dots[r])));
            j += 4;
        } else {
            per.push(if usable(j) { cos(j, dot(vector(j), focal)) } else { 0.0 });
            j += 1;
        }
    }
    distinct.of.iter().map(|&id| per[id as usize]).collect()
}

/// [`dot`] of four vectors with one, each `b.len()` long: the same lane arithmetic per vector
/// (so bit for bit the same results), interleaved.
fn dot4(a: [&[f32]; 4], b: &[f32]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX (checked just above).
        return unsafe { dot4_avx(a, b) };
    }
    dot4_lanes(a, b)
}

/// [`dot4_lanes`] written out in AVX (left to itself, the compiler shuffles the four rows
/// through the stack): each lane does the same IEEE multiplications and additions in the same
/// order (no fused multiply-add), so the sums are bit for bit the portable ones.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn dot4_avx(a: [&[f32]; 4], b: &[f32]) -> [f32; 4] {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };
    const L: usize = 8;
    assert!(a.iter().all(|x| x.len() == b.len()), "vectors of one length");
    let full = b.len() / L * L;
    let mut acc: [__m256; 4] = [_mm256_setzero_ps(); 4];
    let mut c = 0;
    while c < full {
        // SAFETY: c + 8 <= full <= the length of b and of every a[r] (asserted above).
        unsafe {
            let y = _mm256_loadu_ps(b.as_ptr().add(c));
            for r in 0..4 {
                let x = _mm256_loadu_ps(a[r].as_ptr().add(c));
                acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(x, y));
            }
        }
        c += L;
    }
    let mut out = [0f32; 4];
    for r in 0..4 {
        let mut lanes = [0f32; L];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r]) };
        let mut d = lanes.iter().sum::<f32>();
        for (x, y) in a[r][full..].iter().zip(&b[full..]) {
            d += x * y;
        }
        out[r] = d;
    }
    out
}

#[inline(always)]
fn dot4_lanes(a: [&[f32]; 4], b: &[f32]) -> [f32; 4] {
    const L: usize = 8;
    assert!(a.iter().all(|x| x.len() == b.len()), "vectors of one length");
    let mut acc = [[0f32; L]; 4];
    let full = b.len() / L * L;
    let mut c = 0;
    while c < full {
        let y = &b[c..c + L];
        for r in 0..4 {
            let x = &a[r][c..c + L];
            for i in 0..L {
                acc[r][i] += x[i] * y[i];
            }
        }
        c += L;
    }
    let mut out = [0f32; 4];
    for r in 0..4 {
        let mut d = acc[r].iter().sum::<f32>();
        for (x, y) in a[r][full..].iter().zip(&b[full..]) {
            d += x * y;
        }
        out[r] = d;
    }
    out
}

/// `a·b` in eight independent lanes, which the compiler turns into SIMD (a single running sum
/// cannot be reordered, so it stays scalar).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX (checked just above).
        return unsafe { dot_avx(a, b) };
    }
    dot_lanes(a, b)
}

/// The same lane arithmetic compiled with AVX, so the eight lanes fill one 256-bit register
/// instead of two SSE ones: every lane does the same IEEE multiplications and additions in the
/// same order (no fused multiply-add), so the result is bit for bit the portable one and runs
/// stay reproducible across machines.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn dot_avx(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 8;
    let mut acc = [0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..L {
            acc[i] += x[i] * y[i];
        }
    }
    let mut d = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        d += x * y;
    }
    d
}

/// `|a|²`, the same lane arithmetic as [`dot`] of `a` with itself.
fn sq_norm(a: &[f32]) -> f32 {
    dot(a, a)
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
                    let (d, n) = (dot(&r.embedding, &focal), sq_norm(&r.embedding));
                    if n == 0.0 {
                        0.0
                    } else {
                        d / (n.sqrt() * fnorm)
                    }
                })
                .collect();
            let mut m = AssistantMemory::default();
            m.set_records(all);
            let four = relevance(&m.all, &m.distinct, &focal, fnorm);
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
        let (d, n) = (dot(&a, &b), sq_norm(&a));
        let d0: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let n0: f32 = a.iter().map(|x| x * x).sum();
        assert!((d - d0).abs() < 1e-5 && (n - n0).abs() < 1e-5, "{d} {d0} {n} {n0}");
        // The AVX build of the lanes gives the portable result bit for bit (runs stay
        // reproducible across machines).
        for len in [0, 7, 8, 256, 384, 1001] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.731).sin() * 1e3).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.113).cos() / 7.0).collect();
            assert_eq!(dot(&a, &b).to_bits(), dot_lanes(&a, &b).to_bits(), "length {len}");
        }
    }

    #[test]
    fn records_with_one_vector_share_its_entry() {
        let mut m = AssistantMemory::default();
        m.set_records(vec![rec(0, vec![]), rec(1, vec![0.0, 2.0]), rec(2, vec![0.0, 2.0])]);
        m.push(rec(3, vec![3.0, 4.0]));
        m.push(rec(4, vec![-0.0, 2.0]));
        m.push(rec(5, vec![3.0, 4.0]));
        assert_eq!(m.distinct.of, vec![0, 1, 1, 2, 3, 2]);
        assert_eq!(m.distinct.sq_norms, vec![0.0, 4.0, 25.0, 4.0]);
        assert_eq!(m.retrieve(&[1.0, 0.0], 1), vec![5], "record 0 has no vector; of two equal ones, the newer");
        let mut all = m.records().to_vec();
        all[0].embedding = vec![1.0, 0.0];
        m.set_records(all);
        assert_eq!(m.distinct.sq_norms, vec![1.0, 4.0, 25.0, 4.0]);
        assert_eq!(m.retrieve(&[1.0, 0.0], 1), vec![0], "the vector given later is the one retrieved");
        assert_eq!(m.retrieve(&[0.0, 1.0], 3), vec![4, 2, 1], "equal vectors score alike, newer first");
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
