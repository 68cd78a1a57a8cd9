//! `metrics.jsonl`: a sim's metrics as the run goes, one JSON line per event, for whoever watches
//! a run without waiting for `propersim report` (and for MLflow, [`crate::tracking`]):
//!
//! - `{"event": "day", "day": N, ...}` once simulated day N (1-based) has run its last step:
//!   that day's [`DayMetrics`], computed by the report's own code from that day's movement files,
//!   and its No-Recommendation share;
//! - `{"event": "training", "day": N, ...}` once the training on day N's pairs is in use: its
//!   `training.jsonl` line (pairs, epochs, optimizer steps, first and last loss, seconds) and the
//!   mean loss over its steps;
//! - `{"event": "mmlu", "day": N, ...}` once the model of day N was checked (`mmlu.jsonl`).
//!
//! Each line is keyed by its event and day and written at most once. A step redone after a kill
//! therefore writes no day twice; a line whose source (`training.jsonl`, `mmlu.jsonl`) was
//! written just before a kill is filled in when the sim is next opened, as are the days of a sim
//! made before this file existed. So a resumed run ends with the lines of an uninterrupted one.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};
use serde_json::{Map, Value};

use super::metrics::{compute_steps, date_of};
use super::DayMetrics;
use crate::storage::{append_jsonl, count_lines, read_jsonl, truncate_lines};
use crate::tracking::{RunEnd, Tracker};

/// The file, in the sim folder.
pub const METRICS_LOG: &str = "metrics.jsonl";

/// The writer of one sim's `metrics.jsonl`, shared by the engine (days) and the training hook
/// (training, MMLU); with a [`Tracker`], each new line also goes to MLflow.
#[derive(Clone)]
pub struct MetricsLog {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    root: PathBuf,
    path: PathBuf,
    /// (event, day) of every line written.
    seen: HashSet<(String, u64)>,
    tracker: Option<Tracker>,
}

impl MetricsLog {
    /// Open the log of the sim in `root`: drop a line a kill tore, and fill in the training and
    /// MMLU lines whose sources have them.
    pub fn open(root: &Path) -> Result<MetricsLog> {
        let path = root.join(METRICS_LOG);
        truncate_lines(&path, count_lines(&path)?)?;
        let lines: Vec<Value> = read_jsonl(&path)?;
        let seen = lines.iter().filter_map(key).collect();
        let log =
            MetricsLog { inner: Arc::new(Mutex::new(Inner { root: root.to_path_buf(), path, seen, tracker: None })) };
        for line in read_jsonl::<Value>(&root.join(crate::train::adapter::TRAINING_LOG))? {
            log.training(&line)?;
        }
        for line in read_jsonl::<Value>(&root.join(crate::train::mmlu::MMLU_FILE))? {
            log.mmlu(&line)?;
        }
        Ok(log)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn path(&self) -> PathBuf {
        self.lock().path.clone()
    }

    /// Append `line` unless a line of its (event, day) is there; returns whether it was written.
    fn append(&self, line: Value) -> Result<bool> {
        let mut inner = self.lock();
        let Some(k) = key(&line) else { return Ok(false) };
        if inner.seen.contains(&k) {
            return Ok(false);
        }
        append_jsonl(&inner.path, &line)?;
        inner.seen.insert(k);
        if let Some(t) = &inner.tracker {
            t.send(line);
        }
        Ok(true)
    }

    /// Day `day` (0-based), steps `day * steps_per_day` up to the next day's first, has run its
    /// last step: write its metrics (unless its line is there). `curr_time` is the
    /// `meta.curr_time` of its first step, which dates a day without any suggestion.
    pub fn day_ended(&self, day: u64, steps_per_day: u64, curr_time: &str) -> Result<bool> {
        if self.lock().seen.contains(&("day".to_string(), day + 1)) {
            return Ok(false);
        }
        let root = self.lock().root.clone();
        let first = day * steps_per_day;
        let details = compute_steps(&root, first..first + steps_per_day)
            .with_context(|| format!("the metrics of day {}", day + 1))?;
        // The day's steps share one date (days start at midnight); a day without a suggestion
        // (the user asleep throughout) has no scores.
        let metrics = details.into_iter().next().map_or_else(|| DayMetrics::empty(date_of(curr_time)), |d| d.metrics);
        self.append(day_line(day + 1, &metrics)?)
    }

    /// Write the day lines of the days before `next_step` that have none (a sim from before
    /// this file, or a line a power loss took).
    pub fn catch_up_days(&self, next_step: u64, steps_per_day: u64, time_of: impl Fn(u64) -> String) -> Result<()> {
        for day in 0..next_step / steps_per_day.max(1) {
            self.day_ended(day, steps_per_day, &time_of(day * steps_per_day))?;
        }
        Ok(())
    }

    /// The training on day N's pairs is in use; `line` is its `training.jsonl` line.
    pub fn training(&self, line: &Value) -> Result<bool> {
        let Some(day) = line["day"].as_u64() else { return Ok(false) };
        if self.lock().seen.contains(&("training".to_string(), day)) {
            return Ok(false);
        }
        let root = self.lock().root.clone();
        let mut out = event("training", day);
        out.insert("mean_loss".into(), super::curve::mean_train_loss(&root, day)?.into());
        copy_fields(&mut out, line);
        self.append(Value::Object(out))
    }

    /// The model of day N was checked; `line` is its `mmlu.jsonl` line (subject details left out).
    pub fn mmlu(&self, line: &Value) -> Result<bool> {
        let Some(day) = line["day"].as_u64() else { return Ok(false) };
        let mut out = event("mmlu", day);
        for k in ["adapter", "overall_accuracy"] {
            out.insert(k.into(), line[k].clone());
        }
        self.append(Value::Object(out))
    }

    /// Send every line to `tracker` (it skips those MLflow already has), and each new one from
    /// now on.
    pub fn track(&self, setup: crate::tracking::TrackerSetup) -> Result<()> {
        let mut inner = self.lock();
        let lines = read_jsonl(&inner.path)?;
        inner.tracker = Some(Tracker::start(setup, lines)?);
        Ok(())
    }

    /// With a tracker: write the report files (`metrics.json`, `.csv`, `.svg`), hand them and the
    /// logs to MLflow as the run's artifacts, and set the run's status. Returns the tracker's
    /// summary line; `None` without tracking.
    pub async fn end_tracking(&self, end: RunEnd) -> Option<String> {
        let (tracker, root, path) = {
            let inner = self.lock();
            (inner.tracker.clone()?, inner.root.clone(), inner.path.clone())
        };
        let mut files = Vec::new();
        match report_files(&root) {
            Ok(written) => files.extend(written),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "no report files for MLflow"),
        }
        files.push(path);
        files.push(root.join(crate::train::adapter::TRAINING_LOG));
        files.push(root.join(crate::train::mmlu::MMLU_FILE));
        Some(tracker.finish(end, files).await)
    }
}

/// `propersim report`'s files of the sim in `root`.
fn report_files(root: &Path) -> Result<Vec<PathBuf>> {
    let (Some(storage), Some(sim)) = (root.parent(), root.file_name().and_then(|n| n.to_str())) else {
        anyhow::bail!("{} is not a sim folder under storage/", root.display());
    };
    let days = super::report(storage, sim)?;
    super::write_outputs(storage, sim, &days)
}

/// The (event, day) a line is keyed by.
fn key(line: &Value) -> Option<(String, u64)> {
    Some((line["event"].as_str()?.to_string(), line["day"].as_u64()?))
}

fn event(name: &str, day: u64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("event".into(), name.into());
    m.insert("day".into(), day.into());
    m
}

/// Copy `src`'s fields into `out`, except those `out` has.
fn copy_fields(out: &mut Map<String, Value>, src: &Value) {
    for (k, v) in src.as_object().into_iter().flatten() {
        if !out.contains_key(k) {
            out.insert(k.clone(), v.clone());
        }
    }
}

/// A day's line: the event, the day, the report's metrics of that day, its No-Recommendation share.
fn day_line(day: u64, m: &DayMetrics) -> Result<Value> {
    let mut out = event("day", day);
    copy_fields(&mut out, &serde_json::to_value(m)?);
    out.insert("norec_share".into(), m.norec_share().into());
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_written_once_per_event_and_day() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::write(root.join("training.jsonl"), "{\"day\":1,\"pairs\":3,\"epochs\":2,\"steps\":1}\n").unwrap();
        // A line torn by a kill is dropped when the log opens.
        std::fs::write(root.join(METRICS_LOG), "{\"event\":\"mmlu\",\"day\":1,\"adapter\":\"base\"}\n{\"event\":\"da")
            .unwrap();
        let log = MetricsLog::open(root).unwrap();
        let lines: Vec<Value> = read_jsonl(&root.join(METRICS_LOG)).unwrap();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[1]["event"], "training", "the training line is filled in from training.jsonl");
        assert_eq!(lines[1]["pairs"], 3);
        assert_eq!(lines[1]["mean_loss"], Value::Null, "no step metrics, no mean loss");
        // Written again (a resumed run redoing the moment): nothing new.
        assert!(!log.training(&serde_json::json!({"day": 1, "pairs": 3})).unwrap());
        assert!(!log.mmlu(&serde_json::json!({"day": 1, "adapter": "base", "overall_accuracy": 0.5})).unwrap());
        assert!(log.mmlu(&serde_json::json!({"day": 2, "adapter": "day_01", "overall_accuracy": 0.5})).unwrap());
        assert!(!log.training(&serde_json::json!({"pairs": 3})).unwrap(), "a line without a day is no event");
        let again = MetricsLog::open(root).unwrap();
        drop(again);
        assert_eq!(count_lines(&root.join(METRICS_LOG)).unwrap(), 3);
    }

    #[test]
    fn a_day_line_carries_the_report_metrics() {
        let mut m = DayMetrics::empty("February 13");
        m.steps = 4;
        m.norecs = 1;
        m.mean_score = Some(2.5);
        let v = day_line(1, &m).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(&keys[..3], ["event", "day", "date"]);
        assert_eq!(v["mean_score"], 2.5);
        assert_eq!(v["norec_share"], 0.25);
    }
}
