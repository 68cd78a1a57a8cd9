//! Two scripted days: the day-boundary hook fires once with yesterday's pairs, each day has its
//! preference file, and `report` agrees with a computation straight from the movement files.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use propersim::config::{Config, ProviderKind};
use propersim::llm::cache::CacheMode;
use propersim::sim::hooks::DayHook;
use propersim::sim::setup::{open_engine, Open};
use serde_json::Value;

struct Recorder(Arc<Mutex<Vec<(u64, PathBuf, usize)>>>);

impl DayHook for Recorder {
    fn day_ended(&mut self, day: u64, pairs: &Path) -> anyhow::Result<()> {
        let n = propersim::storage::read_jsonl::<Value>(pairs)?.len();
        self.0.lock().unwrap().push((day, pairs.to_path_buf(), n));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_days_hook_pairs_and_report() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.paths.storage = tmp.path().join("storage");
    cfg.paths.seeds = Some(fs.join("storage"));
    cfg.paths.assets = fs.join("static_dirs/assets");
    cfg.paths.temp_storage = tmp.path().join("temp_storage");
    cfg.sim.sim = "two".into();
    cfg.sim.fork = "base_the_ville_persona_12".into();
    cfg.set_all_providers(ProviderKind::Scripted);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut engine =
        open_engine(&cfg, Open::Fork, CacheMode::Off).unwrap().with_day_hook(Box::new(Recorder(calls.clone())));
    propersim::sim::headless::run(&mut engine, 2 * 576, false, Arc::new(AtomicBool::new(false))).await.unwrap();

    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "one boundary inside two days: {calls:?}");
    assert_eq!(calls[0].0, 0);
    assert!(calls[0].1.ends_with("preferences/day_01.jsonl") && calls[0].2 > 50);
    let sim = tmp.path().join("storage/two");
    assert!(sim.join("preferences/day_02.jsonl").is_file());

    // Independent computation from the raw movement files (the notebook's definitions).
    let mut by_day: BTreeMap<String, Vec<(bool, f64)>> = BTreeMap::new();
    for step in 0..2 * 576u64 {
        let m: Value =
            serde_json::from_str(&std::fs::read_to_string(sim.join(format!("movement/{step}.json"))).unwrap()).unwrap();
        let e = &m["persona"]["Eddy Lin"];
        let s = e["suggestion"].as_str().unwrap();
        if s.is_empty() {
            continue;
        }
        let date = m["meta"]["curr_time"].as_str().unwrap().split(", ").next().unwrap().to_string();
        by_day
            .entry(date)
            .or_default()
            .push((s == "No Recommendation", e["eval_res_score"].as_str().unwrap().parse().unwrap()));
    }
    let days = propersim::report::report(&tmp.path().join("storage"), "two").unwrap();
    assert_eq!(days.len(), 2);
    for d in &days {
        let rows = &by_day[&d.date];
        let mean = |v: Vec<f64>| if v.is_empty() { None } else { Some(v.iter().sum::<f64>() / v.len() as f64) };
        let recs: Vec<f64> = rows.iter().filter(|r| !r.0).map(|r| r.1).collect();
        let norecs: Vec<f64> = rows.iter().filter(|r| r.0).map(|r| r.1).collect();
        assert_eq!(d.steps as usize, rows.len());
        assert_eq!(d.recs as usize, recs.len());
        assert_eq!(d.norecs as usize, norecs.len());
        let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() < 1e-9,
            (None, None) => true,
            _ => false,
        };
        assert!(close(d.mean_score, mean(rows.iter().map(|r| r.1).collect())));
        assert!(close(d.rec_mean, mean(recs.clone())));
        assert!(close(d.norec_mean, mean(norecs)));
        let success = rows.iter().filter(|r| r.1 >= 3.0).count() as f64 / rows.len() as f64;
        assert!(close(d.success_rate, Some(success)));
        assert!((d.recs_per_awake_hour - recs.len() as f64 / (rows.len() as f64 / 24.0)).abs() < 1e-9);
        assert_eq!(d.dimensions.len(), 4);
    }
    propersim::report::write_outputs(&tmp.path().join("storage"), "two", &days).unwrap();
    let json: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(sim.join("metrics.json")).unwrap()).unwrap();
    let keys: Vec<&str> = json[0].as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(keys, common::METRIC_KEYS);
}
