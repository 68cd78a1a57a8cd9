//! Per-day metrics computed from a simulation's raw files, following the original
//! `evaluation.ipynb` (assistant_training.md §6) with the fixes listed below.
//!
//! Sources:
//! - `movement/<n>.json`: one file per step (protocol.md §2.3). The assistant's entry carries the
//!   shown `suggestion` and its `eval_res_score`; `meta.curr_time` gives the day.
//! - `records.jsonl` (optional): one line per evaluated step with every candidate's per-dimension
//!   rubric results; it gives the dimension pass rates of the shown candidate.
//!
//! Decisions (documented differences from the notebook):
//! - "No Recommendation" is recognised as the sim recognises it ([`is_no_recommendation`]: an
//!   answer made only of the abstention's words), not by the notebook's substring rule (`no`
//!   anywhere plus `recom`/`recrea`), which turned real suggestions such as "I recommend you rest
//!   now" into abstentions.
//! - A score that is present but does not parse (e.g. `"N/A"`) counts in the denominators as a
//!   zero and as a failure, exactly as in the notebook. A `null` score means the step was not
//!   evaluated (our loop carries no stale score over from an earlier step, unlike the original),
//!   so it is left out of every score average and of the success rate, while the step still counts
//!   in `steps`, `recs`/`norecs` and the recommendation rate.
//! - Non-finite numbers (`"nan"`, `"inf"`, which Python's `float()` accepts) count as unparseable.
//! - All numbered movement files are read in step order; the notebook stopped at the first gap.
//! - Recommendations per awake hour use the sim's `sec_per_step` (150 s by default, so the rate is
//!   `recs / (steps / 24)`): "awake" hours are the hours in which the assistant made a decision.
//! - Days appear in the order of their first step and only if they have a step with a suggestion.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indexmap::IndexMap;
use serde_json::Value;

use super::DayMetrics;
use crate::suggestion::Suggestion;

/// Seconds per step when the sim's `reverie/meta.json` does not say (the original's value).
pub const DEFAULT_SEC_PER_STEP: f64 = 150.0;

/// Rubric dimensions in the order the evaluator spec lists them; other names follow alphabetically.
pub const CANONICAL_DIMENSIONS: [&str; 4] = ["Personal_Preference", "Timing", "Frequency", "Communication_&_Safety"];

/// A score as found in a movement or record file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Score {
    /// Not evaluated (`null` or missing).
    Missing,
    /// Present but not a finite number.
    Unparseable,
    Value(f64),
}

impl Score {
    /// Read a score the way Python's `float()` would, from a number or a numeric string.
    pub fn from_json(v: Option<&Value>) -> Score {
        match v {
            None | Some(Value::Null) => Score::Missing,
            Some(Value::Number(n)) => n.as_f64().filter(|x| x.is_finite()).map_or(Score::Unparseable, Score::Value),
            Some(Value::String(s)) => {
                s.trim().parse::<f64>().ok().filter(|x| x.is_finite()).map_or(Score::Unparseable, Score::Value)
            }
            Some(_) => Score::Unparseable,
        }
    }
}

/// True when a suggestion is "No Recommendation" by the sim's rule ([`Suggestion::from_text`]:
/// only the abstention's words), possibly in its JSON forms: quoted (`"No Recommendation"`), or
/// wrapped as `{"Suggestion": ...}` with or without quotes around the value (the original stored
/// `{"Suggestion": No Recommendation}`).
pub fn is_no_recommendation(suggestion: &str) -> bool {
    let mut s = suggestion.trim();
    if let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        let inner = inner.trim();
        match inner.strip_prefix("\"Suggestion\"").and_then(|r| r.trim_start().strip_prefix(':')) {
            Some(value) => s = value.trim(),
            None => s = inner,
        }
    }
    if let Some(inner) = s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        s = inner.trim();
    }
    !s.is_empty() && Suggestion::from_text(s).is_norec()
}

/// What the report needs from one movement file.
struct StepRow {
    step: u64,
    curr_time: Option<String>,
    /// (persona name, non-empty suggestion, eval_res_score) for every persona with a suggestion.
    suggestions: Vec<(String, String, Score)>,
}

/// What the report needs from `reverie/meta.json`.
struct SimMeta {
    assistant: Option<String>,
    sec_per_step: f64,
}

/// The day part of a `"%B %d, %Y, %H:%M:%S"` time, as the notebook takes it (`February 13`).
pub fn date_of(curr_time: &str) -> &str {
    curr_time.split(", ").next().unwrap_or(curr_time)
}

/// Numbered `movement/<n>.json` files in step order; other names (temporary files) are ignored.
pub fn movement_files(sim_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = sim_dir.join("movement");
    if !dir.exists() {
        bail!("no movement files: {} does not exist (has the simulation run a step?)", dir.display());
    }
    let steps = crate::storage::sim::step_files(&dir)?;
    if steps.is_empty() {
        bail!("no movement files in {} (has the simulation run a step?)", dir.display());
    }
    Ok(steps.into_iter().map(|s| (s, dir.join(format!("{s}.json")))).collect())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

fn read_meta(sim_dir: &Path) -> Result<SimMeta> {
    let path = sim_dir.join("reverie").join("meta.json");
    if !path.exists() {
        return Ok(SimMeta { assistant: None, sec_per_step: DEFAULT_SEC_PER_STEP });
    }
    let meta = read_json(&path)?;
    let assistant = meta
        .get("persona_names")
        .and_then(Value::as_array)
        .and_then(|names| names.get(1))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    let sec_per_step = match meta.get("sec_per_step") {
        None | Some(Value::Null) => DEFAULT_SEC_PER_STEP,
        Some(v) => match v.as_f64() {
            Some(s) if s.is_finite() && s > 0.0 => s,
            _ => bail!("{}: sec_per_step must be a positive number, found {v}", path.display()),
        },
    };
    Ok(SimMeta { assistant, sec_per_step })
}

fn read_step(step: u64, path: &Path) -> Result<StepRow> {
    let v = read_json(path)?;
    let curr_time = v.get("meta").and_then(|m| m.get("curr_time")).and_then(Value::as_str).map(str::to_owned);
    let mut suggestions = Vec::new();
    if let Some(personas) = v.get("persona").and_then(Value::as_object) {
        for (name, entry) in personas {
            let Some(sugg) = entry.get("suggestion").and_then(Value::as_str) else { continue };
            if sugg.trim().is_empty() {
                continue;
            }
            suggestions.push((name.clone(), sugg.to_owned(), Score::from_json(entry.get("eval_res_score"))));
        }
    }
    Ok(StepRow { step, curr_time, suggestions })
}

/// The assistant is `persona_names[1]` of meta.json when given; otherwise the only persona whose
/// entries ever carry a non-empty suggestion (the original wrote the fields into every entry but
/// left them empty for the user).
fn pick_assistant(meta: &SimMeta, rows: &[StepRow]) -> Result<Option<String>> {
    if let Some(name) = &meta.assistant {
        return Ok(Some(name.clone()));
    }
    let mut names: Vec<&str> = Vec::new();
    for row in rows {
        for (name, _, _) in &row.suggestions {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
    }
    match names.len() {
        0 => Ok(None),
        1 => Ok(Some(names[0].to_owned())),
        _ => bail!(
            "cannot tell the assistant apart: personas {names:?} all have suggestions; \
             name it as persona_names[1] in reverie/meta.json"
        ),
    }
}

/// Running sums for one day.
#[derive(Default)]
struct DayAcc {
    steps: u64,
    recs: u64,
    norecs: u64,
    all: ScoreAcc,
    rec: ScoreAcc,
    norec: ScoreAcc,
    /// dimension -> (passes, evaluated)
    dims: HashMap<String, (u64, u64)>,
    /// The same, over the steps whose shown candidate was a recommendation.
    rec_dims: HashMap<String, (u64, u64)>,
}

/// Sum and count of scores where an unparseable score adds 0 to the sum and 1 to the count.
#[derive(Default)]
struct ScoreAcc {
    sum: f64,
    count: u64,
    successes: u64,
}

impl ScoreAcc {
    fn add(&mut self, s: Score) {
        match s {
            Score::Missing => {}
            Score::Unparseable => self.count += 1,
            Score::Value(v) => {
                self.sum += v;
                self.count += 1;
                if v >= 3.0 {
                    self.successes += 1;
                }
            }
        }
    }
    fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
    fn success_rate(&self) -> Option<f64> {
        (self.count > 0).then(|| self.successes as f64 / self.count as f64)
    }
}

/// Order dimension names: the rubric's four first, then any others alphabetically.
pub fn order_dimensions<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut names: Vec<&str> = names.into_iter().collect();
    names.sort_by(|a, b| {
        let rank = |n: &str| CANONICAL_DIMENSIONS.iter().position(|c| *c == n).unwrap_or(CANONICAL_DIMENSIONS.len());
        rank(a).cmp(&rank(b)).then_with(|| a.cmp(b))
    });
    names.dedup();
    names.into_iter().map(str::to_owned).collect()
}

/// Tally the records of `path` (records.jsonl) that fall on one of `days`. The file holds every
/// day of the sim and the day-end metrics read it once a day, so each line's date is read first
/// (its other fields skipped without building them) and only that day's lines are parsed whole.
/// A torn last line (a write cut short) is left out, as `read_jsonl` does.
fn add_records(days: &mut IndexMap<String, DayAcc>, path: &Path) -> Result<()> {
    /// A record's date fields alone.
    #[derive(serde::Deserialize)]
    struct When<'a> {
        #[serde(borrow, default)]
        curr_time: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow, default)]
        date: Option<std::borrow::Cow<'a, str>>,
    }
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    // A day that just ended asks for one date out of the whole history: a line that does not
    // even contain it is skipped unparsed. (With many dates wanted, the search would cost more
    // than the parse it saves.)
    let few: Option<Vec<String>> = (days.len() <= 2).then(|| days.keys().cloned().collect());
    for (i, l) in lines.iter().enumerate() {
        if let Some(few) = &few {
            let last = i + 1 == lines.len();
            if !last && !few.iter().any(|d| l.contains(d.as_str())) {
                continue;
            }
        }
        let when: When = match serde_json::from_str(l) {
            Ok(w) => w,
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => break,
            Err(e) => return Err(e).with_context(|| format!("{} line {}", path.display(), i + 1)),
        };
        let Some(time) = when.curr_time.or(when.date) else {
            bail!("{} line {}: a record needs `curr_time` or `date`", path.display(), i + 1);
        };
        // Days without a shown suggestion in the movement files are not reported.
        let Some(day) = days.get_mut(date_of(&time)) else { continue };
        let rec: Value = serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), i + 1))?;
        add_record(day, &rec);
    }
    Ok(())
}

/// One record of `day`: its shown candidate's dimension scores.
fn add_record(day: &mut DayAcc, rec: &Value) {
    let Some(shown) = rec.get("shown").and_then(Value::as_u64) else { return };
    let Some(dims) =
        rec.get("dimensions").and_then(Value::as_array).and_then(|d| d.get(shown as usize)).and_then(Value::as_object)
    else {
        return;
    };
    // Whether the shown candidate was a recommendation: the record's `no_rec` flag, or else its text.
    let shown_norec = match rec.get("no_rec").and_then(Value::as_array).and_then(|v| v.get(shown as usize)) {
        Some(flag) => flag.as_bool().unwrap_or(false),
        None => rec
            .get("candidates")
            .and_then(Value::as_array)
            .and_then(|c| c.get(shown as usize))
            .and_then(Value::as_str)
            .is_some_and(is_no_recommendation),
    };
    for (name, res) in dims {
        // `{"score": 0|1, "reason": ...}`, or a bare score.
        let score = Score::from_json(if res.is_object() { res.get("score") } else { Some(res) });
        tally(day.dims.entry(name.clone()).or_default(), score);
        if !shown_norec {
            tally(day.rec_dims.entry(name.clone()).or_default(), score);
        }
    }
}

/// Count one dimension result into (passes, evaluated).
fn tally(acc: &mut (u64, u64), score: Score) {
    match score {
        Score::Missing => {}
        Score::Unparseable => acc.1 += 1,
        Score::Value(v) => {
            acc.1 += 1;
            if v > 0.0 {
                acc.0 += 1;
            }
        }
    }
}

/// Pass rate per dimension, the rubric's order first; dimensions never evaluated are left out.
fn pass_rates(dims: &HashMap<String, (u64, u64)>) -> IndexMap<String, f64> {
    order_dimensions(dims.keys().map(String::as_str))
        .into_iter()
        .filter_map(|name| {
            let (pass, n) = dims[&name];
            (n > 0).then(|| (name, pass as f64 / n as f64))
        })
        .collect()
}

/// One day of a sim with what the aggregate over a sweep needs beyond [`DayMetrics`].
#[derive(Debug, Clone, PartialEq)]
pub struct DayDetail {
    pub metrics: DayMetrics,
    /// Dimension pass rates over the steps whose shown suggestion was a recommendation (a
    /// "No Recommendation" passes most checks trivially, so it would flatter the rates).
    pub rec_dimensions: IndexMap<String, f64>,
}

/// A sim's days, and how many of them are over.
#[derive(Debug, Clone, PartialEq)]
pub struct SimDays {
    pub days: Vec<DayDetail>,
    /// Days whose every step has its movement file: the movement files, counted from step 0,
    /// divided by the steps in a day (the seeds start at midnight). The last day of a sim that
    /// is still running is partial and not counted.
    pub complete_days: usize,
}

/// Compute the per-day metrics of the simulation folder `sim_dir`.
pub fn compute(sim_dir: &Path) -> Result<Vec<DayMetrics>> {
    Ok(compute_detailed(sim_dir)?.days.into_iter().map(|d| d.metrics).collect())
}

/// The per-day metrics of `sim_dir` with the recommendation-only dimension pass rates, and the
/// number of complete days.
pub fn compute_detailed(sim_dir: &Path) -> Result<SimDays> {
    let meta = read_meta(sim_dir)?;
    let files = movement_files(sim_dir)?;
    let steps_per_day = (86_400.0 / meta.sec_per_step).round().max(1.0) as usize;
    let contiguous = files.iter().enumerate().take_while(|(i, (step, _))| *i as u64 == *step).count();
    let complete_days = contiguous / steps_per_day;
    let days = days_of(sim_dir, &meta, &files)?;
    Ok(SimDays { days, complete_days })
}

/// The metrics of the steps in `steps` only (e.g. one simulated day that just ended), read from
/// those movement files alone: a running sim reports each day as it ends without reading its
/// whole history again.
pub fn compute_steps(sim_dir: &Path, steps: std::ops::Range<u64>) -> Result<Vec<DayDetail>> {
    let meta = read_meta(sim_dir)?;
    let mut files = movement_files(sim_dir)?;
    files.retain(|(step, _)| steps.contains(step));
    days_of(sim_dir, &meta, &files)
}

/// The days of the movement `files` (with their records), in order of their first step.
fn days_of(sim_dir: &Path, meta: &SimMeta, files: &[(u64, PathBuf)]) -> Result<Vec<DayDetail>> {
    let mut rows = Vec::with_capacity(files.len());
    for (step, path) in files {
        rows.push(read_step(*step, path)?);
    }
    let Some(assistant) = pick_assistant(meta, &rows)? else { return Ok(Vec::new()) };

    let mut days: IndexMap<String, DayAcc> = IndexMap::new();
    for row in &rows {
        let Some((_, sugg, score)) = row.suggestions.iter().find(|(name, _, _)| *name == assistant) else { continue };
        let Some(time) = &row.curr_time else {
            bail!("movement/{}.json has a suggestion but no meta.curr_time", row.step);
        };
        let day = days.entry(date_of(time).to_owned()).or_default();
        day.steps += 1;
        day.all.add(*score);
        if is_no_recommendation(sugg) {
            day.norecs += 1;
            day.norec.add(*score);
        } else {
            day.recs += 1;
            day.rec.add(*score);
        }
    }

    add_records(&mut days, &sim_dir.join("records.jsonl"))?;

    Ok(days
        .into_iter()
        .map(|(date, d)| DayDetail {
            rec_dimensions: pass_rates(&d.rec_dims),
            metrics: DayMetrics {
                date,
                steps: d.steps,
                mean_score: d.all.mean(),
                recs: d.recs,
                rec_mean: d.rec.mean(),
                norecs: d.norecs,
                norec_mean: d.norec.mean(),
                success_rate: d.all.success_rate(),
                // recs / (steps · sec_per_step / 3600), ordered so 150 s/step gives exact decimals.
                recs_per_awake_hour: d.recs as f64 * 3600.0 / (d.steps as f64 * meta.sec_per_step),
                dimensions: pass_rates(&d.dims),
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_recommendation_is_the_sims_rule() {
        for yes in [
            "No Recommendation",
            "  no recommendation ",
            "\"No Recommendation\"",
            "{\"Suggestion\": No Recommendation}",
            "{\"Suggestion\": \"No Recommendation\"}",
            "{ \"Suggestion\" :\"NO RECOMMENDATION\" }",
            "No Recommendations",
            "{\"Suggestion\": \"None Recommendation\"}",
        ] {
            assert!(is_no_recommendation(yes), "{yes:?}");
        }
        for no in [
            "I recommend you rest now",
            "\"Do you know this recommended recipe?\"",
            "No Recommendation yet, but drink water",
            "{\"Reason\": \"No Recommendation\"}",
            "",
        ] {
            assert!(!is_no_recommendation(no), "{no:?}");
        }
    }

    #[test]
    fn scores_parse_like_python_float_but_finite() {
        assert_eq!(Score::from_json(Some(&Value::from("3.0"))), Score::Value(3.0));
        assert_eq!(Score::from_json(Some(&Value::from(" 2 "))), Score::Value(2.0));
        assert_eq!(Score::from_json(Some(&Value::from(4))), Score::Value(4.0));
        assert_eq!(Score::from_json(Some(&Value::from("nan"))), Score::Unparseable);
        assert_eq!(Score::from_json(Some(&Value::from("N/A"))), Score::Unparseable);
        assert_eq!(Score::from_json(Some(&Value::Bool(true))), Score::Unparseable);
        assert_eq!(Score::from_json(Some(&Value::Null)), Score::Missing);
        assert_eq!(Score::from_json(None), Score::Missing);
    }

    #[test]
    fn dates_and_dimension_order() {
        assert_eq!(date_of("February 13, 2025, 08:02:30"), "February 13");
        assert_eq!(
            order_dimensions(["Zeal", "Timing", "Communication_&_Safety", "Personal_Preference", "Frequency", "Alpha"]),
            ["Personal_Preference", "Timing", "Frequency", "Communication_&_Safety", "Alpha", "Zeal"]
        );
    }
}
