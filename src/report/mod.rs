//! `propersim report`: per-day metrics of a simulation (the original only had a notebook, see
//! assistant_training.md §6), printed as a table or JSON and written next to the run as
//! `metrics.json`, `metrics.csv` and a `metrics.svg` chart (the paper's figure: mean score and
//! recommendations per awake hour by day).
//!
//! - [`metrics`]: reading movement files and records, the metric definitions.
//! - [`table`]: the aligned text table and the CSV.
//! - [`chart`]: the hand-written SVG charts.
//! - [`sweep`]: the aggregate over a sweep's personas (`report --sweep`), from the same metrics.
//! - [`live`]: `metrics.jsonl`, the same metrics written as the run goes (and sent to MLflow).

pub mod chart;
pub mod curve;
pub mod live;
pub mod metrics;
pub mod sweep;
pub mod table;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::storage::sim::check_sim_code;

pub use chart::render_svg;
pub use metrics::is_no_recommendation;
pub use table::{render_csv, render_table};

/// One simulated day. Serialized with exactly these keys, in this order (`metrics.json`, `--json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DayMetrics {
    /// `meta.curr_time` up to the first `", "`, e.g. `February 13` (as the notebook prints it).
    pub date: String,
    /// Steps with a non-empty assistant suggestion, "No Recommendation" included.
    pub steps: u64,
    /// Mean score over those steps (no-recs included); `None` when none was evaluated.
    pub mean_score: Option<f64>,
    /// Steps with a real recommendation.
    pub recs: u64,
    pub rec_mean: Option<f64>,
    /// Steps where the assistant said "No Recommendation".
    pub norecs: u64,
    pub norec_mean: Option<f64>,
    /// Fraction of evaluated steps with score >= 3.
    pub success_rate: Option<f64>,
    /// Recommendations per hour of steps where the assistant made a decision (24 max at 150 s/step).
    pub recs_per_awake_hour: f64,
    /// Rubric dimension -> fraction of the shown candidates that passed it (from `records.jsonl`).
    pub dimensions: IndexMap<String, f64>,
}

impl DayMetrics {
    /// Share of the day's suggestions that were "No Recommendation" (`None` without any).
    pub fn norec_share(&self) -> Option<f64> {
        (self.steps > 0).then(|| self.norecs as f64 / self.steps as f64)
    }

    /// A day on which the assistant made no suggestion (asleep all day): no scores, no rates.
    pub fn empty(date: &str) -> DayMetrics {
        DayMetrics {
            date: date.to_owned(),
            steps: 0,
            mean_score: None,
            recs: 0,
            rec_mean: None,
            norecs: 0,
            norec_mean: None,
            success_rate: None,
            recs_per_awake_hour: 0.0,
            dimensions: IndexMap::new(),
        }
    }
}

/// The folder of simulation `sim` under `storage`, refusing names that are not sim codes
/// ([`check_sim_code`], the rule of the CLI and the web pages; the name comes from the command
/// line or a request).
pub fn sim_dir(storage: &Path, sim: &str) -> Result<PathBuf> {
    check_sim_code(sim).map_err(anyhow::Error::msg)?;
    let dir = storage.join(sim);
    if !dir.is_dir() {
        bail!("simulation {sim:?} not found: {} is not a folder", dir.display());
    }
    Ok(dir)
}

/// Per-day metrics of `storage/<sim>/`, in day order. Errors on a missing sim or one without
/// movement files; a sim whose assistant never made a suggestion gives an empty list.
pub fn report(storage: &Path, sim: &str) -> Result<Vec<DayMetrics>> {
    let dir = sim_dir(storage, sim)?;
    metrics::compute(&dir).with_context(|| format!("computing the report of simulation {sim:?}"))
}

/// Write `metrics.json` (Python `json.dumps(indent=2)` format), `metrics.csv` and `metrics.svg`
/// into `storage/<sim>/`, each atomically. Returns the paths written.
pub fn write_outputs(storage: &Path, sim: &str, days: &[DayMetrics]) -> Result<Vec<PathBuf>> {
    let dir = sim_dir(storage, sim)?;
    let json = dir.join("metrics.json");
    let csv = dir.join("metrics.csv");
    let svg = dir.join("metrics.svg");
    crate::storage::write_json_py(&json, &days)?;
    crate::storage::write_atomic(&csv, render_csv(days).as_bytes())?;
    crate::storage::write_atomic(&svg, render_svg(sim, days).as_bytes())?;
    Ok(vec![json, csv, svg])
}

/// The whole `propersim report SIM [--json]` command: compute, write the three files, and return
/// the text to print (the table, or the JSON list when `json` is set).
pub fn run_report_command(storage: &Path, sim: &str, json: bool) -> Result<String> {
    let days = report(storage, sim)?;
    write_outputs(storage, sim, &days)?;
    if json {
        Ok(crate::storage::pyjson::to_string_indent2(&days)? + "\n")
    } else {
        Ok(render_table(&days))
    }
}
