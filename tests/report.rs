//! `propersim report` against an independent computation from the raw files: the committed
//! fixture sim (tests/fixtures/report_sim, small enough to check by hand too) and a multi-day sim
//! generated here with a seeded RNG. The oracle below is written separately from the library:
//! one pass in the notebook's style (read `movement/0.json`, `1.json`, ... until one is missing)
//! with plain HashMaps and its own "No Recommendation" and score rules.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use propersim::report::{self, DayMetrics};
use propersim::storage::sim::copy_tree;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report_sim")
}

// ---------------------------------------------------------------------------------------------
// The oracle.

/// Strip the characters `{ } "` and a `suggestion:` label, then compare, lowercased.
fn oracle_is_norec(s: &str) -> bool {
    let cleaned: String = s.to_lowercase().chars().filter(|c| !matches!(c, '{' | '}' | '"')).collect();
    let cleaned = cleaned.trim();
    let cleaned = match cleaned.split_once(':') {
        Some((label, rest)) if label.trim() == "suggestion" => rest.trim(),
        _ => cleaned,
    };
    cleaned == "no recommendation"
}

/// None = not evaluated (skipped); Some(None) = unparseable (counts as 0); Some(Some(x)) = score.
fn oracle_score(v: &Value) -> Option<Option<f64>> {
    match v {
        Value::Null => None,
        Value::Number(n) => Some(n.as_f64()),
        Value::String(s) => Some(s.trim().parse::<f64>().ok().filter(|x| x.is_finite())),
        _ => Some(None),
    }
}

#[derive(Default, Debug)]
struct OracleDay {
    steps: u64,
    recs: u64,
    norecs: u64,
    scores: Vec<Option<f64>>,
    rec_scores: Vec<Option<f64>>,
    norec_scores: Vec<Option<f64>>,
    dim_pass: HashMap<String, u64>,
    dim_total: HashMap<String, u64>,
}

fn mean(v: &[Option<f64>]) -> Option<f64> {
    if v.is_empty() {
        None
    } else {
        Some(v.iter().map(|x| x.unwrap_or(0.0)).sum::<f64>() / v.len() as f64)
    }
}

fn oracle(sim_dir: &Path, assistant: &str) -> (Vec<String>, HashMap<String, OracleDay>) {
    let mut order = Vec::new();
    let mut days: HashMap<String, OracleDay> = HashMap::new();
    let mut i = 0;
    while let Ok(text) = fs::read_to_string(sim_dir.join(format!("movement/{i}.json"))) {
        i += 1;
        let v: Value = serde_json::from_str(&text).unwrap();
        let entry = &v["persona"][assistant];
        let sugg = entry["suggestion"].as_str().unwrap_or("");
        if sugg.trim().is_empty() {
            continue;
        }
        let date = v["meta"]["curr_time"].as_str().unwrap().split(", ").next().unwrap().to_string();
        if !days.contains_key(&date) {
            order.push(date.clone());
        }
        let d = days.entry(date).or_default();
        d.steps += 1;
        let score = oracle_score(&entry["eval_res_score"]);
        if let Some(s) = score {
            d.scores.push(s);
        }
        if oracle_is_norec(sugg) {
            d.norecs += 1;
            d.norec_scores.extend(score);
        } else {
            d.recs += 1;
            d.rec_scores.extend(score);
        }
    }
    if let Ok(text) = fs::read_to_string(sim_dir.join("records.jsonl")) {
        for line in text.split('\n') {
            let Ok(rec) = serde_json::from_str::<Value>(line) else { continue };
            let time = rec["curr_time"].as_str().or(rec["date"].as_str()).unwrap();
            let Some(d) = days.get_mut(time.split(", ").next().unwrap()) else { continue };
            let shown = rec["shown"].as_u64().unwrap() as usize;
            let Some(dims) = rec["dimensions"][shown].as_object() else { continue };
            for (name, r) in dims {
                let Some(s) = oracle_score(&r["score"]) else { continue };
                *d.dim_total.entry(name.clone()).or_default() += 1;
                if s.unwrap_or(0.0) > 0.0 {
                    *d.dim_pass.entry(name.clone()).or_default() += 1;
                }
            }
        }
    }
    (order, days)
}

fn close(a: Option<f64>, b: Option<f64>, what: &str) {
    match (a, b) {
        (None, None) => {}
        (Some(x), Some(y)) => assert!((x - y).abs() < 1e-9, "{what}: library {x} vs oracle {y}"),
        _ => panic!("{what}: library {a:?} vs oracle {b:?}"),
    }
}

/// `decisions_per_hour` is 3600 / sec_per_step: 24 for the original's 150 s steps.
fn check_against_oracle(sim_dir: &Path, assistant: &str, decisions_per_hour: f64, got: &[DayMetrics]) {
    let (order, days) = oracle(sim_dir, assistant);
    assert_eq!(got.iter().map(|d| d.date.clone()).collect::<Vec<_>>(), order);
    for g in got {
        let o = &days[&g.date];
        let w = |f: &str| format!("{} {f}", g.date);
        assert_eq!(g.steps, o.steps, "{}", w("steps"));
        assert_eq!(g.recs, o.recs, "{}", w("recs"));
        assert_eq!(g.norecs, o.norecs, "{}", w("norecs"));
        close(g.mean_score, mean(&o.scores), &w("mean_score"));
        close(g.rec_mean, mean(&o.rec_scores), &w("rec_mean"));
        close(g.norec_mean, mean(&o.norec_scores), &w("norec_mean"));
        let success = (!o.scores.is_empty())
            .then(|| o.scores.iter().filter(|s| s.is_some_and(|x| x >= 3.0)).count() as f64 / o.scores.len() as f64);
        close(g.success_rate, success, &w("success_rate"));
        close(
            Some(g.recs_per_awake_hour),
            Some(o.recs as f64 / (o.steps as f64 / decisions_per_hour)),
            &w("recs_per_awake_hour"),
        );
        let mut names: Vec<&String> = o.dim_total.keys().filter(|k| o.dim_total[*k] > 0).collect();
        names.sort();
        let mut got_names: Vec<&String> = g.dimensions.keys().collect();
        got_names.sort();
        assert_eq!(got_names, names, "{}", w("dimension names"));
        for n in names {
            let rate = *o.dim_pass.get(n).unwrap_or(&0) as f64 / o.dim_total[n] as f64;
            close(Some(g.dimensions[n]), Some(rate), &w(n));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fixture.

#[test]
fn fixture_matches_oracle_and_hand_checked_values() {
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(&fixture_dir(), &tmp.path().join("report_sim")).unwrap();
    let days = report::report(tmp.path(), "report_sim").unwrap();
    check_against_oracle(&tmp.path().join("report_sim"), "Eddy Lin", 24.0, &days);

    // By hand from the fixture (see the step list in tests/fixtures/report_sim/README.md).
    assert_eq!(days.len(), 2);
    let (d1, d2) = (&days[0], &days[1]);
    assert_eq!((d1.date.as_str(), d1.steps, d1.recs, d1.norecs), ("February 13", 5, 3, 2));
    close(d1.mean_score, Some(2.0), "day 1 mean (N/A counts as 0)");
    close(d1.rec_mean, Some(4.0 / 3.0), "day 1 rec mean");
    close(d1.norec_mean, Some(3.0), "day 1 norec mean");
    close(d1.success_rate, Some(0.4), "day 1 success");
    close(Some(d1.recs_per_awake_hour), Some(14.4), "day 1 recs/h");
    let dims1: Vec<(&str, f64)> = d1.dimensions.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        dims1,
        [("Personal_Preference", 0.8), ("Timing", 0.4), ("Frequency", 0.4), ("Communication_&_Safety", 1.0)]
    );
    assert_eq!((d2.date.as_str(), d2.steps, d2.recs, d2.norecs), ("February 14", 4, 2, 2));
    close(d2.mean_score, Some(7.0 / 3.0), "day 2 mean (null skipped)");
    close(d2.rec_mean, Some(4.0), "day 2 rec mean");
    close(d2.norec_mean, Some(1.5), "day 2 norec mean");
    close(d2.success_rate, Some(2.0 / 3.0), "day 2 success");
    close(Some(d2.recs_per_awake_hour), Some(12.0), "day 2 recs/h");
    close(d2.dimensions.get("Frequency").copied(), Some(1.0 / 3.0), "day 2 frequency");
}

#[test]
fn outputs_have_the_promised_shape() {
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(&fixture_dir(), &tmp.path().join("report_sim")).unwrap();
    let printed = report::run_report_command(tmp.path(), "report_sim", true).unwrap();
    let sim = tmp.path().join("report_sim");

    // metrics.json: a list of objects with exactly the documented keys, equal to the --json output.
    let written = fs::read_to_string(sim.join("metrics.json")).unwrap();
    assert_eq!(printed.trim_end(), written);
    let list: Vec<serde_json::Map<String, Value>> = serde_json::from_str(&written).unwrap();
    assert_eq!(list.len(), 2);
    for obj in &list {
        assert_eq!(obj.keys().map(String::as_str).collect::<Vec<_>>(), common::METRIC_KEYS);
        assert!(obj["success_rate"].as_f64().unwrap() <= 1.0, "success_rate is a fraction");
    }
    let back: Vec<DayMetrics> = serde_json::from_str(&written).unwrap();
    assert_eq!(back, report::report(tmp.path(), "report_sim").unwrap());

    // metrics.csv: header, then one row per day with the same numbers.
    let csv = fs::read_to_string(sim.join("metrics.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "date,steps,mean_score,recs,rec_mean,norecs,norec_mean,success_rate,recs_per_awake_hour,\
         dim_Personal_Preference,dim_Timing,dim_Frequency,dim_Communication_&_Safety"
    );
    assert_eq!(lines.len(), 3);
    let cells: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(cells[0], "February 13");
    assert_eq!(cells[2].parse::<f64>().unwrap(), back[0].mean_score.unwrap());
    assert_eq!(cells[8].parse::<f64>().unwrap(), back[0].recs_per_awake_hour);

    // metrics.svg: an <svg> document holding both series and the axis labels.
    let svg = fs::read_to_string(sim.join("metrics.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains(r#"id="series-mean-score""#) && svg.contains(r#"id="series-recs-per-hour""#));
    assert!(svg.contains("Mean score (0–4)") && svg.contains("Recommendations per awake hour"));
    assert_eq!(svg.matches("<polyline").count(), 2, "one unbroken line per series");
    assert!(svg.contains("February 14"));
    assert_balanced_tags(&svg);

    // The table: one aligned line per day under a header and a rule.
    let table = report::run_report_command(tmp.path(), "report_sim", false).unwrap();
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 4, "{table}");
    assert!(rows.iter().all(|r| r.chars().count() == rows[0].chars().count()), "{table}");
    assert!(rows[2].starts_with("February 13") && rows[2].contains("40.0%"), "{table}");
}

/// A small well-formedness check: every opened element is closed in order, attributes quoted.
fn assert_balanced_tags(svg: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').expect("unclosed tag") + start;
        let tag = &rest[start + 1..end];
        assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes in <{tag}>");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name.trim()), "mismatched </{name}>");
        } else if !tag.ends_with('/') {
            stack.push(tag.split_whitespace().next().unwrap().to_string());
        }
        rest = &rest[end + 1..];
    }
    assert!(stack.is_empty(), "unclosed elements {stack:?}");
}

// ---------------------------------------------------------------------------------------------
// A generated multi-day sim.

const REC_TEXTS: [&str; 5] = [
    "\"Would you like to take a short walk outside?\"",
    "\"I recommend you know your limits now and rest.\"", // the original's substring rule: a no-rec
    "\"Maybe call your sister tonight?\"",
    "\"No Recommendation needed? Try stretching.\"",
    "\"Drink some water.\"",
];
const NOREC_TEXTS: [&str; 5] = [
    "No Recommendation",
    "\"No Recommendation\"",
    "{\"Suggestion\": No Recommendation}",
    "no recommendation",
    " NO RECOMMENDATION ",
];
const DIMS: [&str; 4] = ["Personal_Preference", "Timing", "Frequency", "Communication_&_Safety"];

/// Writes `steps` movement files from February 13, 00:00:00 on (`sec_per_step` apart) and
/// records.jsonl. The user sleeps from 23:00 to 07:00 and so gets no suggestions then.
fn generate_sim(dir: &Path, seed: u64, steps: u64, sec_per_step: i64, user: &str, assistant: &str) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    fs::create_dir_all(dir.join("movement")).unwrap();
    let start = chrono::NaiveDate::from_ymd_opt(2025, 2, 13).unwrap().and_hms_opt(0, 0, 0).unwrap();
    let mut records = String::new();
    for step in 0..steps {
        let t = start + chrono::Duration::seconds(sec_per_step * step as i64);
        let curr_time = t.format("%B %d, %Y, %H:%M:%S").to_string();
        let hour = chrono::Timelike::hour(&t);
        let asleep = !(7..23).contains(&hour);
        let (sugg, score): (Value, Value) = if asleep || rng.gen_bool(0.05) {
            (if rng.gen_bool(0.5) { json!("") } else { Value::Null }, Value::Null)
        } else {
            let text = if rng.gen_bool(0.4) {
                NOREC_TEXTS[rng.gen_range(0..NOREC_TEXTS.len())]
            } else {
                REC_TEXTS[rng.gen_range(0..REC_TEXTS.len())]
            };
            let s = rng.gen_range(0..=4);
            let score = match rng.gen_range(0..100) {
                0..=79 => json!(format!("{s}.0")),
                80..=87 => json!(s),
                88..=91 => json!(["N/A", "", "nan", "three"][rng.gen_range(0..4)]),
                _ => Value::Null,
            };
            (json!(text), score)
        };
        let entry = |sugg: &Value, score: &Value| {
            json!({"movement": [5, 10], "pronunciatio": null, "description": "idle @ the Ville:house:room:bed", "chat": null,
                   "user_action_for_suggestion": "doing things", "suggestion": sugg, "eval_res_score": score,
                   "eval_res_reason": null})
        };
        let mv = json!({"persona": {user: entry(&json!(""), &json!("2.0")), assistant: entry(&sugg, &score)},
                        "meta": {"curr_time": curr_time, "is_john_walking": "no", "number_of_action_tokens": 10}});
        fs::write(dir.join(format!("movement/{step}.json")), serde_json::to_string_pretty(&mv).unwrap()).unwrap();

        if !score.is_null() {
            let shown = if rng.gen_bool(0.8) { 1 } else { 0 };
            let dims: Vec<Value> = (0..2)
                .map(|_| {
                    let mut m = serde_json::Map::new();
                    for d in DIMS {
                        if rng.gen_bool(0.03) {
                            continue; // a dimension the evaluator did not return
                        }
                        let s = match rng.gen_range(0..50) {
                            0 => json!("?"),
                            1 => Value::Null,
                            n => json!(n % 2),
                        };
                        m.insert(d.to_string(), json!({"score": s, "reason": "r"}));
                    }
                    Value::Object(m)
                })
                .collect();
            // Some records carry only the date (with the year), to exercise that fallback.
            let when = if rng.gen_bool(0.2) {
                json!({"date": curr_time.rsplit_once(", ").unwrap().0})
            } else {
                json!({"curr_time": curr_time, "date": curr_time.rsplit_once(", ").unwrap().0})
            };
            let mut rec = json!({"step": step, "action": "doing things", "candidates": ["No Recommendation", sugg],
                                 "scores": [1.0, 2.0], "reasons": ["a", "b"], "shown": shown, "no_rec": [true, false],
                                 "dimensions": dims});
            rec.as_object_mut().unwrap().extend(when.as_object().unwrap().clone());
            records += &serde_json::to_string(&rec).unwrap();
            records.push('\n');
        }
    }
    fs::write(dir.join("records.jsonl"), records).unwrap();
}

#[test]
fn generated_sims_match_oracle() {
    let tmp = tempfile::tempdir().unwrap();
    let ada = "Ada Park";

    // The original's 150 s steps over a day and a half; no meta.json at all, so the assistant is
    // detected and the step length defaults to 150 s.
    let dir = tmp.path().join("gen_150");
    generate_sim(&dir, 7, 860, 150, "Sam Moore", ada);
    let days = report::report(tmp.path(), "gen_150").unwrap();
    assert_eq!(days.len(), 2);
    assert!(days.iter().all(|d| d.steps > 0 && d.recs > 0 && d.norecs > 0 && d.dimensions.len() == 4));
    check_against_oracle(&dir, ada, 24.0, &days);
    // Naming the assistant in meta.json gives the same answer.
    fs::create_dir_all(dir.join("reverie")).unwrap();
    fs::write(
        dir.join("reverie/meta.json"),
        json!({"persona_names": ["Sam Moore", ada], "sec_per_step": 150}).to_string(),
    )
    .unwrap();
    assert_eq!(report::report(tmp.path(), "gen_150").unwrap(), days);

    // Ten-minute steps (6 decisions an hour) over four and a bit days, meta.json without names.
    let dir = tmp.path().join("gen_600");
    generate_sim(&dir, 2024, 4 * 144 + 60, 600, "Sam Moore", ada);
    fs::create_dir_all(dir.join("reverie")).unwrap();
    fs::write(dir.join("reverie/meta.json"), json!({"sec_per_step": 600}).to_string()).unwrap();
    let days = report::report(tmp.path(), "gen_600").unwrap();
    assert_eq!(days.len(), 5);
    check_against_oracle(&dir, ada, 6.0, &days);
}

#[test]
fn bad_input_gives_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let err = |sim: &str| format!("{:#}", report::report(tmp.path(), sim).unwrap_err());

    assert!(err("nope").contains("not found"), "{}", err("nope"));
    for bad in ["", "..", "a/b", "/etc"] {
        assert!(err(bad).contains("invalid simulation name"), "{bad:?}: {}", err(bad));
    }
    fs::create_dir_all(tmp.path().join("empty/movement")).unwrap();
    assert!(err("empty").contains("no movement files"), "{}", err("empty"));
    fs::create_dir_all(tmp.path().join("fresh")).unwrap();
    assert!(err("fresh").contains("no movement files"), "{}", err("fresh"));

    // Two personas with suggestions and no meta.json: refuse to guess.
    generate_sim(&tmp.path().join("two"), 1, 310, 150, "Sam Moore", "Ada Park");
    let mv = tmp.path().join("two/movement/300.json");
    let text = fs::read_to_string(&mv).unwrap().replacen("\"suggestion\": \"\"", "\"suggestion\": \"\\\"Hi\\\"\"", 1);
    fs::write(&mv, text).unwrap();
    assert!(err("two").contains("cannot tell the assistant apart"), "{}", err("two"));

    // A corrupt movement file names itself.
    fs::write(tmp.path().join("two/movement/3.json"), "{\"persona\": ").unwrap();
    assert!(err("two").contains("3.json"), "{}", err("two"));

    // A sim whose assistant never spoke yet: an empty report, and the files still written.
    generate_sim(&tmp.path().join("quiet"), 3, 20, 150, "Sam Moore", "Ada Park"); // 00:00-00:50, asleep
    let text = report::run_report_command(tmp.path(), "quiet", false).unwrap();
    assert!(text.contains("no step with an assistant suggestion"), "{text}");
    assert_eq!(fs::read_to_string(tmp.path().join("quiet/metrics.json")).unwrap(), "[]");
    assert!(fs::read_to_string(tmp.path().join("quiet/metrics.svg")).unwrap().starts_with("<svg"));
}
