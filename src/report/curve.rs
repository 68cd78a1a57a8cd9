//! An experiment's learning curves: per day and arm, what the paper plots (mean score, success
//! rate, recommendations per awake hour) and what explains it (dimension pass rates of the
//! recommendations, the pairs trained and the training loss at the day's end, MMLU of the model
//! that served the day). Written as `curve.json`, `curve.csv` and `curve.svg` in
//! `experiments/<NAME>/`, from the arms' sim folders alone, so it can be recomputed at any time.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chart::xml;
use super::metrics::{compute_detailed, order_dimensions};
use crate::storage::experiment::{self as layout, Manifest};

/// One day of one arm. Serialized with exactly these keys, in this order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurveDay {
    /// 1 for the first simulated day.
    pub day: u64,
    pub date: String,
    /// Whether every step of the day has run (the last day of a running arm is partial).
    pub complete: bool,
    /// Mean score of the shown suggestions, "No Recommendation" included (the paper's measure).
    pub mean_score: Option<f64>,
    /// Share of evaluated steps with score >= 3.
    pub success_rate: Option<f64>,
    pub recs_per_awake_hour: f64,
    /// Rubric dimension -> pass rate over the steps that showed a recommendation.
    pub rec_dimensions: IndexMap<String, f64>,
    /// Preference pairs trained on at the end of this day (with the replay buffer's share).
    pub pairs_trained: Option<u64>,
    /// Mean loss over that training's optimizer steps.
    pub train_loss: Option<f64>,
    /// MMLU accuracy of the model that made this day's suggestions (day 1: the base model).
    pub mmlu: Option<f64>,
}

/// The curves of an experiment: arm -> its days.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    pub experiment: String,
    pub fork: String,
    pub arms: IndexMap<String, Vec<CurveDay>>,
}

/// The curves of experiment `name`, from its manifest and its arms' sim folders (an arm whose
/// sim does not exist yet has no days).
pub fn compute(storage: &Path, name: &str) -> Result<Curve> {
    let m = layout::read_manifest(storage, name)?
        .with_context(|| format!("no experiment `{name}` in {}", storage.display()))?;
    compute_for(storage, &m)
}

fn compute_for(storage: &Path, m: &Manifest) -> Result<Curve> {
    let mut arms = IndexMap::new();
    for arm in &m.arms {
        let dir = storage.join(layout::sim_code(&m.name, arm));
        // An arm forked but not yet stepped (or not yet forked) has no days.
        let stepped = std::fs::read_dir(dir.join("movement"))
            .map(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".json"))))
            .unwrap_or(false);
        let days = if stepped && dir.join("reverie/meta.json").is_file() {
            arm_days(&dir).with_context(|| format!("the `{arm}` arm ({})", dir.display()))?
        } else {
            Vec::new()
        };
        arms.insert(arm.clone(), days);
    }
    Ok(Curve { experiment: m.name.clone(), fork: m.fork.clone(), arms })
}

/// The days of one arm's sim folder.
pub fn arm_days(dir: &Path) -> Result<Vec<CurveDay>> {
    let sim = compute_detailed(dir)?;
    let training = training_by_day(dir)?;
    let mmlu = super::sweep::read_mmlu(dir)?;
    Ok(sim
        .days
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let day = i as u64 + 1;
            let trained = training.get(&day);
            CurveDay {
                day,
                date: d.metrics.date,
                complete: i < sim.complete_days,
                mean_score: d.metrics.mean_score,
                success_rate: d.metrics.success_rate,
                recs_per_awake_hour: d.metrics.recs_per_awake_hour,
                rec_dimensions: d.rec_dimensions,
                pairs_trained: trained.map(|t| t.0),
                train_loss: trained.and_then(|t| t.1),
                // `mmlu.jsonl` numbers each check by the day whose model it checked (day 1: the
                // base model; day d + 1: the adapter trained at the end of day d).
                mmlu: mmlu.get(&day).copied(),
            }
        })
        .collect())
}

/// Day -> (pairs trained, mean loss) from `training.jsonl` (the last line of a day wins: a
/// resumed run may have written one twice) and each day's `adapters/day_NN/train_metrics.jsonl`.
fn training_by_day(dir: &Path) -> Result<IndexMap<u64, (u64, Option<f64>)>> {
    let mut out = IndexMap::new();
    for line in crate::storage::read_jsonl::<Value>(&dir.join(crate::train::adapter::TRAINING_LOG))? {
        let (Some(day), Some(pairs)) = (line["day"].as_u64(), line["pairs"].as_u64()) else { continue };
        out.insert(day, (pairs, mean_train_loss(dir, day)?));
    }
    Ok(out)
}

/// Mean loss over the optimizer steps of the training on day `day`'s pairs, from its
/// `adapters/day_NN/train_metrics.jsonl` (`None` when it logged no step).
pub fn mean_train_loss(dir: &Path, day: u64) -> Result<Option<f64>> {
    let steps: Vec<Value> = crate::storage::read_jsonl(
        &crate::train::adapter::day_dir(&dir.join("adapters"), day as u32).join("train_metrics.jsonl"),
    )?;
    let losses: Vec<f64> = steps.iter().filter_map(|s| s["loss"].as_f64()).collect();
    Ok((!losses.is_empty()).then(|| losses.iter().sum::<f64>() / losses.len() as f64))
}

fn num(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_default()
}

/// One row per arm and day; dimension columns are the union over arms, in the rubric's order.
pub fn render_csv(c: &Curve) -> String {
    let dims = order_dimensions(c.arms.values().flatten().flat_map(|d| d.rec_dimensions.keys().map(String::as_str)));
    let mut out =
        String::from("arm,day,date,complete,mean_score,success_rate,recs_per_awake_hour,pairs_trained,train_loss,mmlu");
    for d in &dims {
        let _ = write!(out, ",rec_pass_{d}");
    }
    out.push('\n');
    for (arm, days) in &c.arms {
        for d in days {
            let _ = write!(
                out,
                "{arm},{},{},{},{},{},{:.4},{},{},{}",
                d.day,
                d.date,
                d.complete,
                num(d.mean_score),
                num(d.success_rate),
                d.recs_per_awake_hour,
                d.pairs_trained.map(|p| p.to_string()).unwrap_or_default(),
                num(d.train_loss),
                num(d.mmlu)
            );
            for name in &dims {
                let _ = write!(out, ",{}", num(d.rec_dimensions.get(name).copied()));
            }
            out.push('\n');
        }
    }
    out
}

/// An aligned text table for the terminal: one line per day, the arms side by side.
pub fn render_table(c: &Curve) -> String {
    let n = c.arms.values().map(Vec::len).max().unwrap_or(0);
    let mut out = format!("{:>4}", "day");
    for arm in c.arms.keys() {
        let _ = write!(out, "  {:>22}", format!("{arm}: score succ recs/h"));
    }
    out.push('\n');
    for i in 0..n {
        let _ = write!(out, "{:>4}", i + 1);
        for days in c.arms.values() {
            let cell = match days.get(i) {
                Some(d) => format!(
                    "{} {} {:5.1}{}",
                    d.mean_score.map_or("    -".into(), |v| format!("{v:5.2}")),
                    d.success_rate.map_or("   -".into(), |v| format!("{:3.0}%", v * 100.0)),
                    d.recs_per_awake_hour,
                    if d.complete { " " } else { "*" }
                ),
                None => "-".into(),
            };
            let _ = write!(out, "  {cell:>22}");
        }
        out.push('\n');
    }
    if c.arms.values().flatten().any(|d| !d.complete) {
        out.push_str("* day not over yet\n");
    }
    out
}

/// Colours of the arms, in order (colour-blind safe).
const COLORS: [&str; 6] = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9"];

/// One panel of the picture: a title, its value range, and the value of each arm's day.
struct Panel<'a> {
    id: &'a str,
    title: &'a str,
    max: f64,
    value: fn(&CurveDay) -> Option<f64>,
}

const PANEL_W: f64 = 420.0;
const PANEL_H: f64 = 260.0;
const PAD_L: f64 = 50.0;
const PAD_T: f64 = 34.0;
const PAD_B: f64 = 36.0;
const PAD_R: f64 = 16.0;

/// Four panels in a 2×2 grid (mean score, success rate, recommendations per awake hour, MMLU),
/// each arm one coloured line with a legend on top. Each arm's line in a panel is a `<g>` with
/// the id `<panel>-<arm>`, and each point has a `<title>` with its exact value.
pub fn render_svg(c: &Curve) -> String {
    let panels = [
        Panel { id: "mean-score", title: "Mean score (0–4)", max: 4.0, value: |d| d.mean_score },
        Panel { id: "success-rate", title: "Success rate (score ≥ 3)", max: 1.0, value: |d| d.success_rate },
        Panel {
            id: "recs-per-hour",
            title: "Recommendations per awake hour",
            max: 24.0,
            value: |d| Some(d.recs_per_awake_hour),
        },
        Panel { id: "mmlu", title: "MMLU accuracy of the day's model", max: 1.0, value: |d| d.mmlu },
    ];
    let n = c.arms.values().map(Vec::len).max().unwrap_or(0).max(1);
    let (w, h) = (2.0 * PANEL_W, 2.0 * PANEL_H + 40.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="Helvetica, Arial, sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{:.1}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>
"#,
        w / 2.0,
        xml(&format!("Experiment {} (forked from {})", c.experiment, c.fork))
    );
    let _ = writeln!(svg, r#"<g id="legend">"#);
    for (i, arm) in c.arms.keys().enumerate() {
        let x = 20.0 + i as f64 * 110.0;
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            svg,
            r#"  <line x1="{x}" y1="34" x2="{:.1}" y2="34" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="38">{}</text>"#,
            x + 24.0,
            x + 30.0,
            xml(arm)
        );
    }
    svg.push_str("</g>\n");
    for (k, p) in panels.iter().enumerate() {
        let (ox, oy) = ((k % 2) as f64 * PANEL_W, 40.0 + (k / 2) as f64 * PANEL_H);
        let (pw, ph) = (PANEL_W - PAD_L - PAD_R, PANEL_H - PAD_T - PAD_B);
        let (left, top) = (ox + PAD_L, oy + PAD_T);
        let x = |i: usize| left + (i as f64 + 0.5) * pw / n as f64;
        let y = |v: f64| top + ph - v.clamp(0.0, p.max) / p.max * ph;
        let _ = writeln!(svg, r#"<g id="panel-{}">"#, p.id);
        let _ = writeln!(
            svg,
            r#"  <text x="{:.1}" y="{:.1}" text-anchor="middle" font-weight="bold">{}</text>"#,
            left + pw / 2.0,
            oy + 22.0,
            xml(p.title)
        );
        for t in 0..=4 {
            let v = p.max * t as f64 / 4.0;
            let _ = writeln!(
                svg,
                r##"  <line x1="{left:.1}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#dddddd"/><text x="{2:.1}" y="{3:.1}" text-anchor="end">{4}</text>"##,
                y(v),
                left + pw,
                left - 6.0,
                y(v) + 4.0,
                trim(v)
            );
        }
        let label_every = n.div_ceil(10);
        for i in (0..n).step_by(label_every) {
            let _ = writeln!(
                svg,
                r#"  <text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x(i),
                top + ph + 16.0,
                i + 1
            );
        }
        let _ = writeln!(
            svg,
            r#"  <text x="{:.1}" y="{:.1}" text-anchor="middle">day</text>"#,
            left + pw / 2.0,
            top + ph + 31.0
        );
        for (a, (arm, days)) in c.arms.iter().enumerate() {
            let color = COLORS[a % COLORS.len()];
            let _ =
                writeln!(svg, r#"  <g id="{}-{}" fill="none" stroke="{color}" stroke-width="2.5">"#, p.id, xml(arm));
            let pts: Vec<Option<(f64, f64)>> =
                days.iter().enumerate().map(|(i, d)| (p.value)(d).map(|v| (x(i), y(v)))).collect();
            for run in pts.split(|p| p.is_none()).filter(|r| !r.is_empty()) {
                let coords: Vec<String> = run.iter().flatten().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let _ = writeln!(svg, r#"    <polyline points="{}"/>"#, coords.join(" "));
            }
            for (d, pt) in days.iter().zip(&pts) {
                let Some((px, py)) = pt else { continue };
                let v = (p.value)(d).unwrap_or_default();
                let _ = writeln!(
                    svg,
                    r#"    <circle cx="{px:.1}" cy="{py:.1}" r="3.5" fill="{color}"><title>{}</title></circle>"#,
                    xml(&format!("{arm}, day {}: {v:.3}", d.day))
                );
            }
            svg.push_str("  </g>\n");
        }
        let _ = writeln!(
            svg,
            r##"  <rect x="{left:.1}" y="{top:.1}" width="{pw:.1}" height="{ph:.1}" fill="none" stroke="#444444"/>"##
        );
        svg.push_str("</g>\n");
    }
    svg.push_str("</svg>\n");
    svg
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Write `curve.json`, `curve.csv` and `curve.svg` into `experiments/<NAME>/`, atomically.
pub fn write_outputs(storage: &Path, c: &Curve) -> Result<Vec<PathBuf>> {
    let dir = layout::experiment_dir(storage, &c.experiment)?;
    let (json, csv, svg) = (dir.join("curve.json"), dir.join("curve.csv"), dir.join("curve.svg"));
    crate::storage::write_json_py(&json, c)?;
    crate::storage::write_atomic(&csv, render_csv(c).as_bytes())?;
    crate::storage::write_atomic(&svg, render_svg(c).as_bytes())?;
    Ok(vec![json, csv, svg])
}

/// `propersim report --experiment NAME [--json]`: compute, write the three files, return the text.
pub fn run_report_command(storage: &Path, name: &str, json: bool) -> Result<String> {
    let c = compute(storage, name)?;
    let files = write_outputs(storage, &c)?;
    if json {
        return Ok(crate::storage::pyjson::to_string_indent2(&c)? + "\n");
    }
    let mut out = render_table(&c);
    let _ = writeln!(out, "Written: {}", files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    let _ = writeln!(out, "Page: `propersim serve`, then http://127.0.0.1:8000/experiments/{name}/");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(day: u64, score: Option<f64>) -> CurveDay {
        CurveDay {
            day,
            date: format!("February {}", 12 + day),
            complete: day < 3,
            mean_score: score,
            success_rate: score.map(|s| s / 4.0),
            recs_per_awake_hour: 6.0,
            rec_dimensions: [("Timing".to_string(), 0.5)].into_iter().collect(),
            pairs_trained: Some(10 * day),
            train_loss: Some(0.69),
            mmlu: None,
        }
    }

    #[test]
    fn files_hold_every_arm_and_day() {
        let c = Curve {
            experiment: "e".into(),
            fork: "base".into(),
            arms: [
                ("dpo".to_string(), vec![day(1, Some(2.0)), day(2, Some(3.0)), day(3, None)]),
                ("none".to_string(), vec![day(1, Some(2.0))]),
            ]
            .into_iter()
            .collect(),
        };
        let csv = render_csv(&c);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[0].ends_with(",rec_pass_Timing"), "{}", lines[0]);
        assert_eq!(lines[2], "dpo,2,February 14,true,3.0000,0.7500,6.0000,20,0.6900,,0.5000");
        let svg = render_svg(&c);
        for id in ["mean-score-dpo", "mean-score-none", "success-rate-dpo", "mmlu-none", "recs-per-hour-dpo"] {
            assert!(svg.contains(&format!("id=\"{id}\"")), "{id}");
        }
        // A missing score breaks the line instead of dropping to zero.
        assert!(svg.contains("dpo, day 2: 3.000"));
        let group = svg.split("id=\"mean-score-dpo\"").nth(1).unwrap().split("</g>").next().unwrap();
        assert_eq!(group.matches("<circle").count(), 2, "{group}");
        let table = render_table(&c);
        assert!(table.contains("* day not over yet"), "{table}");
    }
}
