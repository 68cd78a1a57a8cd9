//! The daily MMLU check (assistant_training.md §5): does training hurt general knowledge?
//!
//! The original takes the first 100 test items of `human_aging, nutrition, world_religions,
//! prehistory, sociology`, prompts in plain text (no chat template), decodes greedily up to 10
//! tokens and parses the answer letter: the first `\b[ABCD]\b` in the upper-cased reply, else its
//! first character if that is A–D, else `A`. Overall accuracy is the unweighted mean over
//! subjects. Items come from a local JSONL file in `cais/mmlu`'s fields
//! (`subject`, `question`, `choices`, `answer` as index 0–3 or a letter).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use candle_core::D;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::model::CausalLm;

/// The daily MMLU results in a sim's folder: one line per simulated day, for the model that day
/// ran with (day 1: the base model; day N + 1: the adapter trained on day N's pairs).
pub const MMLU_FILE: &str = "mmlu.jsonl";

pub const SUBJECTS: [&str; 5] = ["human_aging", "nutrition", "world_religions", "prehistory", "sociology"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Answer {
    Index(usize),
    Letter(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmluItem {
    pub subject: String,
    pub question: String,
    pub choices: Vec<String>,
    pub answer: Answer,
}

impl MmluItem {
    /// The correct letter, validated against the choices.
    pub fn answer_letter(&self) -> Result<char> {
        let idx = match &self.answer {
            Answer::Index(i) => *i,
            Answer::Letter(s) => match s.trim().to_ascii_uppercase().as_str() {
                "A" => 0,
                "B" => 1,
                "C" => 2,
                "D" => 3,
                other => bail!("answer {other:?} is not a letter A-D"),
            },
        };
        if idx >= self.choices.len() || idx >= 4 {
            bail!("answer index {idx} out of range for {} choices", self.choices.len());
        }
        Ok((b'A' + idx as u8) as char)
    }
}

pub fn read_items(path: &Path) -> Result<Vec<MmluItem>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: MmluItem =
            serde_json::from_str(line).with_context(|| format!("{} line {}", path.display(), i + 1))?;
        item.answer_letter().with_context(|| format!("{} line {}", path.display(), i + 1))?;
        out.push(item);
    }
    Ok(out)
}

/// The original's prompt text.
pub fn prompt_text(item: &MmluItem) -> String {
    let mut s =
        String::from("Answer the following multiple choice question by selecting the most appropriate option.\n\n");
    s += &format!("Question: {}\n\nOptions:\n", item.question);
    for (i, c) in item.choices.iter().enumerate() {
        s += &format!("{}. {}\n", (b'A' + i as u8) as char, c);
    }
    s += "\nAnswer: ";
    s
}

/// The original's letter parsing of the stripped reply: the first standalone `A`-`D` of its
/// upper-cased text, else its first character if that is one, else `A`.
pub fn parse_letter(reply: &str) -> char {
    let up = reply.trim().to_uppercase();
    if let Some(m) = letter_regex().find(&up) {
        return m.as_str().chars().next().unwrap_or('A');
    }
    up.chars().next().filter(|c| ('A'..='D').contains(c)).unwrap_or('A')
}

/// The letter [`parse_letter`] reads from every continuation of `reply`, once more text can no
/// longer change it: the first standalone letter is followed by an ASCII character that is not
/// a word character, so its boundaries are fixed and no earlier match can appear. Generation
/// stops there instead of running all 10 tokens, with the same answer.
pub fn settled_letter(reply: &str) -> Option<char> {
    let up = reply.trim_start().to_uppercase();
    let m = letter_regex().find(&up)?;
    let next = up[m.end()..].chars().next()?;
    (next.is_ascii() && !next.is_ascii_alphanumeric() && next != '_').then(|| m.as_str().chars().next()).flatten()
}

fn letter_regex() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"\b[ABCD]\b").expect("static regex"))
}

pub use crate::llm::TextCodec;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmluOptions {
    pub subjects: Vec<String>,
    pub per_subject: usize,
    pub max_new_tokens: usize,
    /// Prepended to each prompt (the original tokenizes with BOS).
    pub bos: Option<u32>,
    /// Generation stops at any of these.
    pub stop: Vec<u32>,
    /// Prompts are cut to this many tokens, keeping the start (HF's default truncation side).
    pub max_prompt_tokens: usize,
}

impl MmluOptions {
    /// The original's settings for a model with these special tokens: BOS first as HF's
    /// tokenizer adds it, generation ending at any stop token.
    pub fn for_model(special: &crate::llm::local::tokenizer::SpecialTokens) -> Self {
        MmluOptions { bos: special.bos.as_ref().map(|b| b.0), stop: special.stop_ids.clone(), ..Default::default() }
    }
}

impl Default for MmluOptions {
    fn default() -> Self {
        MmluOptions {
            subjects: SUBJECTS.iter().map(|s| s.to_string()).collect(),
            per_subject: 100,
            max_new_tokens: 10,
            bos: None,
            stop: Vec::new(),
            max_prompt_tokens: 2048,
        }
    }
}

/// The original's result shape: `{overall_accuracy, subject_accuracies}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmluReport {
    pub overall_accuracy: f64,
    pub subject_accuracies: IndexMap<String, f64>,
    pub questions: usize,
}

/// Greedy generation from a fresh prompt, until a stop token, `max_new` tokens, or `done` says
/// the tokens so far are enough.
pub fn greedy(
    lm: &mut dyn CausalLm,
    prompt: &[u32],
    max_new: usize,
    stop: &[u32],
    done: &mut dyn FnMut(&[u32]) -> Result<bool>,
) -> Result<Vec<u32>> {
    lm.reset();
    let mut logits = lm.forward_last(prompt, 0)?;
    let mut out = Vec::new();
    for pos in prompt.len()..prompt.len() + max_new {
        let tok = logits.argmax(D::Minus1)?.to_scalar::<u32>()?;
        if stop.contains(&tok) {
            break;
        }
        out.push(tok);
        if out.len() == max_new || done(&out)? {
            break;
        }
        logits = lm.forward_last(&[tok], pos)?;
    }
    Ok(out)
}

/// A check stopped by its `cancel` flag before its last question.
#[derive(Debug, thiserror::Error)]
#[error("the MMLU check was cancelled")]
pub struct Cancelled;

/// Run the check over `items` (the first `per_subject` items of each subject, in file order).
/// Once `cancel` is raised it stops before the next question with [`Cancelled`] and no report:
/// a check cut short must not pass for the day's accuracy, and 500 questions are minutes of a
/// CPU that a stopping run should not wait for.
pub fn run_mmlu(
    lm: &mut dyn CausalLm,
    codec: &dyn TextCodec,
    items: &[MmluItem],
    opts: &MmluOptions,
    cancel: &AtomicBool,
) -> Result<MmluReport> {
    let mut subject_accuracies = IndexMap::new();
    let mut questions = 0;
    for subject in &opts.subjects {
        let chosen: Vec<&MmluItem> = items.iter().filter(|i| &i.subject == subject).take(opts.per_subject).collect();
        if chosen.is_empty() {
            bail!("no MMLU items for subject {subject:?}");
        }
        let mut correct = 0usize;
        for item in &chosen {
            if cancel.load(Ordering::Relaxed) {
                return Err(Cancelled.into());
            }
            let mut ids: Vec<u32> = opts.bos.into_iter().collect();
            ids.extend(codec.encode(&prompt_text(item))?);
            ids.truncate(opts.max_prompt_tokens.max(1));
            let mut settled = |out: &[u32]| Ok(settled_letter(&codec.decode(out)?).is_some());
            let out = greedy(lm, &ids, opts.max_new_tokens, &opts.stop, &mut settled)?;
            let reply = codec.decode(&out)?;
            if parse_letter(&reply) == item.answer_letter()? {
                correct += 1;
            }
        }
        questions += chosen.len();
        subject_accuracies.insert(subject.clone(), correct as f64 / chosen.len() as f64);
    }
    let overall_accuracy = subject_accuracies.values().sum::<f64>() / subject_accuracies.len().max(1) as f64;
    Ok(MmluReport { overall_accuracy, subject_accuracies, questions })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letter_parsing_follows_the_original() {
        assert_eq!(parse_letter(" b. Nutrition"), 'B');
        assert_eq!(parse_letter("The answer is (C)"), 'C');
        assert_eq!(parse_letter("Dietary fibre"), 'D');
        assert_eq!(parse_letter("none"), 'A');
        assert_eq!(parse_letter("CAB"), 'C');
        // The original strips the reply before taking its first character.
        assert_eq!(parse_letter(" Dietary fibre"), 'D');
        assert_eq!(parse_letter("\n b"), 'B');
    }

    #[test]
    fn a_settled_letter_is_what_any_continuation_parses_to() {
        for (reply, settled) in [
            (" B", None),
            (" B.", Some('B')),
            ("Bananas", None),
            (" The answer is C)", Some('C')),
            ("D\u{e9}", None),
            ("b_", None),
            ("", None),
        ] {
            assert_eq!(settled_letter(reply), settled, "{reply:?}");
            if let Some(c) = settled {
                for tail in ["", " A", "ND B.", "\u{e9} D"] {
                    assert_eq!(parse_letter(&format!("{reply}{tail}")), c, "{reply:?} + {tail:?}");
                }
            }
        }
    }
}
