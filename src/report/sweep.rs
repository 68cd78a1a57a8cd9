//! `propersim report --sweep NAME`: the paper's aggregate. Per simulated day, the mean over the
//! sweep's personas of each single-sim metric, with its 95% interval and how many personas it
//! averages. It reads only files (the sims' movement files, `records.jsonl`, `mmlu.jsonl`, and
//! the sweep's `sweep.json`), so it works on a sweep whose shards ran on other machines.
//!
//! Per persona and day the values are the single-sim report's ([`super::metrics`]): mean score,
//! success rate (score ≥ 3), recommendations per awake hour; plus the No-Recommendation share
//! (no-recs / decisions), the dimension pass rates over recommendations only, and the day's MMLU
//! accuracy (after training on that day). Only complete days count: the running day of a sim
//! still stepping would pull the mean around as it fills.
//!
//! The interval is Student's t: mean ± t(0.975, n−1) · s / √n, with s the sample standard
//! deviation over personas; with one persona there is none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chart::{render_score_band_svg, BandPoint};
use super::metrics::{compute_detailed, order_dimensions};
use super::table::csv_field;
use crate::storage::sweep as layout;

/// A metric over personas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub mean: Option<f64>,
    pub ci95_low: Option<f64>,
    pub ci95_high: Option<f64>,
    /// Personas with a value.
    pub n: u64,
}

impl Stat {
    /// Mean and 95% interval of `values`.
    pub fn of(values: &[f64]) -> Stat {
        let n = values.len();
        if n == 0 {
            return Stat { mean: None, ci95_low: None, ci95_high: None, n: 0 };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        if n == 1 {
            return Stat { mean: Some(mean), ci95_low: None, ci95_high: None, n: 1 };
        }
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let half = t975(n as u64 - 1) * (var / n as f64).sqrt();
        Stat { mean: Some(mean), ci95_low: Some(mean - half), ci95_high: Some(mean + half), n: n as u64 }
    }
}

/// Student's t 0.975 quantile for `df` degrees of freedom: a table to 30, then the
/// Cornish–Fisher expansion around the normal quantile (error below 1e-4 there).
pub fn t975(df: u64) -> f64 {
    const TABLE: [f64; 30] = [
        12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139, 2.200985,
        2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963, 2.079614, 2.073873,
        2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => TABLE[df as usize - 1],
        _ => {
            let (z, d) = (1.959963984540054_f64, df as f64);
            let g1 = (z.powi(3) + z) / 4.0;
            let g2 = (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / 96.0;
            let g3 = (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z) / 384.0;
            z + g1 / d + g2 / d.powi(2) + g3 / d.powi(3)
        }
    }
}

/// One simulated day over the sweep. Serialized with exactly these keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepDay {
    /// 1 for the sims' first day.
    pub day: u64,
    /// The day's date (the seeds all start on the same one).
    pub date: String,
    /// Personas whose sim has finished this day.
    pub personas: u64,
    pub mean_score: Stat,
    pub success_rate: Stat,
    pub recs_per_awake_hour: Stat,
    pub norec_share: Stat,
    /// Rubric dimension -> pass rate over recommendations only.
    pub dimensions: IndexMap<String, Stat>,
    /// Greedy MMLU accuracy of the model the day ran with: day 1 the base, day N + 1 the
    /// adapter trained on day N (sims run with `daily_mmlu`).
    pub mmlu: Stat,
}

/// The aggregate report of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    pub sweep: String,
    /// The sims averaged (at least one complete day).
    pub sims: Vec<String>,
    /// The sweep's sims with no complete day (not started, still in their first day, or failed).
    pub missing: Vec<String>,
    pub days: Vec<SweepDay>,
}

/// Everything one persona contributes to one day.
#[derive(Default)]
struct PersonaDay {
    date: String,
    mean_score: Option<f64>,
    success_rate: Option<f64>,
    recs_per_awake_hour: Option<f64>,
    norec_share: Option<f64>,
    dimensions: IndexMap<String, f64>,
    mmlu: Option<f64>,
}

/// `mmlu.jsonl`: day (1-based, the day whose model was checked) -> overall accuracy; the last
/// line of a day wins (a resumed run may have checked it twice).
pub(super) fn read_mmlu(sim_dir: &Path) -> Result<BTreeMap<u64, f64>> {
    let path = sim_dir.join("mmlu.jsonl");
    let mut out = BTreeMap::new();
    for v in crate::storage::read_jsonl::<Value>(&path)? {
        if let (Some(d), Some(a)) =
            (v.get("day").and_then(Value::as_u64), v.get("overall_accuracy").and_then(Value::as_f64))
        {
            out.insert(d, a);
        }
    }
    Ok(out)
}

/// The complete days of one sim.
fn persona_days(sim_dir: &Path) -> Result<Vec<PersonaDay>> {
    let detail = compute_detailed(sim_dir)?;
    let mmlu = read_mmlu(sim_dir)?;
    Ok(detail
        .days
        .into_iter()
        .take(detail.complete_days)
        .enumerate()
        .map(|(i, d)| {
            let m = d.metrics;
            PersonaDay {
                mean_score: m.mean_score,
                success_rate: m.success_rate,
                recs_per_awake_hour: (m.steps > 0).then_some(m.recs_per_awake_hour),
                norec_share: m.norec_share(),
                dimensions: d.rec_dimensions,
                mmlu: mmlu.get(&(i as u64 + 1)).copied(),
                date: m.date,
            }
        })
        .collect())
}

/// The sims of sweep `name`: the personas of its `sweep.json`, or, without one, the
/// `<name>_p<k>` folders present.
fn sweep_sims(storage: &Path, name: &str) -> Result<Vec<(u32, PathBuf)>> {
    let personas = match layout::read_manifest(storage, name)? {
        Some(m) => m.personas,
        None => layout::sims_present(storage, name)?,
    };
    if personas.is_empty() {
        bail!(
            "no sweep `{name}` in {}: neither {name}/{} nor any {name}_p<k> simulation",
            storage.display(),
            layout::MANIFEST
        );
    }
    Ok(personas.into_iter().map(|k| (k, storage.join(layout::sim_code(name, k)))).collect())
}

/// Compute the aggregate report of sweep `name` from the files under `storage`.
pub fn report(storage: &Path, name: &str) -> Result<SweepReport> {
    let sims = sweep_sims(storage, name)?;
    let mut included = Vec::new();
    let mut missing = Vec::new();
    let mut by_persona = Vec::new();
    for (k, dir) in sims {
        let code = layout::sim_code(name, k);
        let days = if dir.join("movement").is_dir() {
            persona_days(&dir).with_context(|| format!("reading simulation {code}"))?
        } else {
            Vec::new()
        };
        if days.is_empty() {
            missing.push(code);
        } else {
            included.push(code);
            by_persona.push(days);
        }
    }
    let n_days = by_persona.iter().map(Vec::len).max().unwrap_or(0);
    let mut days = Vec::with_capacity(n_days);
    for i in 0..n_days {
        let rows: Vec<&PersonaDay> = by_persona.iter().filter_map(|p| p.get(i)).collect();
        let stat =
            |f: &dyn Fn(&PersonaDay) -> Option<f64>| Stat::of(&rows.iter().filter_map(|r| f(r)).collect::<Vec<_>>());
        let dims = order_dimensions(rows.iter().flat_map(|r| r.dimensions.keys().map(String::as_str)));
        days.push(SweepDay {
            day: i as u64 + 1,
            date: rows.first().map(|r| r.date.clone()).unwrap_or_default(),
            personas: rows.len() as u64,
            mean_score: stat(&|r| r.mean_score),
            success_rate: stat(&|r| r.success_rate),
            recs_per_awake_hour: stat(&|r| r.recs_per_awake_hour),
            norec_share: stat(&|r| r.norec_share),
            dimensions: dims.into_iter().map(|d| (d.clone(), stat(&|r| r.dimensions.get(&d).copied()))).collect(),
            mmlu: stat(&|r| r.mmlu),
        });
    }
    Ok(SweepReport { sweep: name.to_string(), sims: included, missing, days })
}

/// Suffixes of a metric's four CSV columns.
pub const CSV_STAT_SUFFIXES: [&str; 4] = ["mean", "ci95_low", "ci95_high", "n"];

/// The metric columns in order: the four fixed ones, `dim_<dimension>` for each dimension of
/// any day, `mmlu`.
fn metric_names(r: &SweepReport) -> Vec<String> {
    let dims = order_dimensions(r.days.iter().flat_map(|d| d.dimensions.keys().map(String::as_str)));
    let mut v: Vec<String> =
        ["mean_score", "success_rate", "recs_per_awake_hour", "norec_share"].map(String::from).to_vec();
    v.extend(dims.iter().map(|k| format!("{}{k}", super::table::CSV_DIMENSION_PREFIX)));
    v.push("mmlu".into());
    v
}

/// A day's metric by its column name (an absent dimension has no value).
fn metric(d: &SweepDay, name: &str) -> Stat {
    match name {
        "mean_score" => d.mean_score.clone(),
        "success_rate" => d.success_rate.clone(),
        "recs_per_awake_hour" => d.recs_per_awake_hour.clone(),
        "norec_share" => d.norec_share.clone(),
        "mmlu" => d.mmlu.clone(),
        other => other
            .strip_prefix(super::table::CSV_DIMENSION_PREFIX)
            .and_then(|k| d.dimensions.get(k).cloned())
            .unwrap_or_else(|| Stat::of(&[])),
    }
}

/// The report as CSV: `day,date,personas`, then four columns per metric (`<metric>_mean`,
/// `_ci95_low`, `_ci95_high`, `_n`); dimension columns are the union over days.
pub fn render_csv(r: &SweepReport) -> String {
    let names = metric_names(r);
    let mut header = vec!["day".to_string(), "date".into(), "personas".into()];
    for name in &names {
        header.extend(CSV_STAT_SUFFIXES.iter().map(|s| csv_field(&format!("{name}_{s}"))));
    }
    let mut out = header.join(",") + "\n";
    let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    for d in &r.days {
        let mut row = vec![d.day.to_string(), csv_field(&d.date), d.personas.to_string()];
        for name in &names {
            let s = metric(d, name);
            row.extend([opt(s.mean), opt(s.ci95_low), opt(s.ci95_high), s.n.to_string()]);
        }
        out += &row.join(",");
        out.push('\n');
    }
    out
}

/// `2.31 ± 0.12` (half the interval), or the mean alone, or `-`; rates as percentages.
fn cell(s: &Stat, percent: bool) -> String {
    let k = if percent { 100.0 } else { 1.0 };
    let (dec, unit) = if percent { (1, "%") } else { (2, "") };
    match (s.mean, s.ci95_low, s.ci95_high) {
        (Some(m), Some(lo), Some(hi)) => format!("{:.dec$}{unit} ± {:.dec$}", m * k, (hi - lo) / 2.0 * k),
        (Some(m), _, _) => format!("{:.dec$}{unit}", m * k),
        _ => "-".into(),
    }
}

/// The table's header and rows, formatted (each metric as mean ± half its 95% interval), for
/// the terminal table and the web page alike.
pub fn table_cells(r: &SweepReport) -> (Vec<String>, Vec<Vec<String>>) {
    let dims = order_dimensions(r.days.iter().flat_map(|d| d.dimensions.keys().map(String::as_str)));
    let mut header: Vec<String> =
        ["Day", "Date", "Personas", "Mean score", "Success", "Recs/awake h", "NoRec share"].map(String::from).to_vec();
    header.extend(dims.iter().map(|d| format!("{d} (recs)")));
    let with_mmlu = r.days.iter().any(|d| d.mmlu.n > 0);
    if with_mmlu {
        header.push("MMLU".into());
    }
    let empty = Stat::of(&[]);
    let rows = r
        .days
        .iter()
        .map(|d| {
            let mut row = vec![
                d.day.to_string(),
                d.date.clone(),
                d.personas.to_string(),
                cell(&d.mean_score, false),
                cell(&d.success_rate, true),
                cell(&d.recs_per_awake_hour, false),
                cell(&d.norec_share, true),
            ];
            row.extend(dims.iter().map(|k| cell(d.dimensions.get(k).unwrap_or(&empty), true)));
            if with_mmlu {
                row.push(cell(&d.mmlu, true));
            }
            row
        })
        .collect();
    (header, rows)
}

/// An aligned text table: one row per day.
pub fn render_table(r: &SweepReport) -> String {
    let (header, rows) = table_cells(r);
    let width =
        |i: usize| rows.iter().map(|r| r[i].chars().count()).chain([header[i].chars().count()]).max().unwrap_or(0);
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = " ".repeat(widths[i].saturating_sub(c.chars().count()));
                if i == 1 {
                    format!("{c}{pad}")
                } else {
                    format!("{pad}{c}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = format!(
        "Sweep {}: {} sims averaged{}; mean ± half the 95% interval\n",
        r.sweep,
        r.sims.len(),
        if r.missing.is_empty() { String::new() } else { format!(", {} without a complete day", r.missing.len()) }
    );
    out += &(line(&header) + "\n");
    out += &(widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  ") + "\n");
    for row in &rows {
        out += &(line(row) + "\n");
    }
    if r.days.is_empty() {
        out += "(no sim of this sweep has finished a day yet)\n";
    }
    out
}

/// The chart: mean score per day with its 95% band.
pub fn render_svg(r: &SweepReport) -> String {
    let points: Vec<BandPoint> = r
        .days
        .iter()
        .map(|d| BandPoint {
            date: &d.date,
            mean: d.mean_score.mean,
            low: d.mean_score.ci95_low,
            high: d.mean_score.ci95_high,
            n: d.mean_score.n,
        })
        .collect();
    render_score_band_svg(&format!("Daily mean score over {} personas: {}", r.sims.len(), r.sweep), &points)
}

/// Write `metrics.json`, `metrics.csv` and `metrics.svg` into `storage/<name>/`. Returns the paths.
pub fn write_outputs(storage: &Path, r: &SweepReport) -> Result<Vec<PathBuf>> {
    let dir = layout::sweep_dir(storage, &r.sweep)?;
    let (json, csv, svg) = (dir.join("metrics.json"), dir.join("metrics.csv"), dir.join("metrics.svg"));
    crate::storage::write_json_py(&json, r)?;
    crate::storage::write_atomic(&csv, render_csv(r).as_bytes())?;
    crate::storage::write_atomic(&svg, render_svg(r).as_bytes())?;
    Ok(vec![json, csv, svg])
}

/// The whole `propersim report --sweep NAME [--json]` command: compute, write the three files,
/// and return the text to print.
pub fn run_report_command(storage: &Path, name: &str, json: bool) -> Result<String> {
    let r = report(storage, name)?;
    write_outputs(storage, &r)?;
    if json {
        Ok(crate::storage::pyjson::to_string_indent2(&r)? + "\n")
    } else {
        Ok(render_table(&r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_follow_students_t() {
        let s = Stat::of(&[1.0, 2.0, 3.0, 4.0]);
        // mean 2.5, s = 1.290994, t(3) = 3.182446: half = 3.182446 * 1.290994 / 2 = 2.054260.
        assert!((s.mean.unwrap() - 2.5).abs() < 1e-12);
        assert!((s.ci95_low.unwrap() - (2.5 - 2.054260)).abs() < 1e-5, "{s:?}");
        assert!((s.ci95_high.unwrap() - (2.5 + 2.054260)).abs() < 1e-5);
        assert_eq!(s.n, 4);
        assert_eq!(Stat::of(&[3.0]), Stat { mean: Some(3.0), ci95_low: None, ci95_high: None, n: 1 });
        assert_eq!(Stat::of(&[]).n, 0);
        // The expansion joins the table smoothly and tends to the normal quantile.
        assert!((t975(31) - 2.039513).abs() < 1e-4, "{}", t975(31));
        assert!((t975(60) - 2.000298).abs() < 1e-4);
        assert!((t975(100_000) - 1.959988).abs() < 1e-4);
    }
}
