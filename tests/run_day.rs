//! A whole scripted day on the real map and seed, checked against the original's contracts.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use propersim::config::{Config, NoRecRatio, ProviderKind};
use propersim::llm::cache::CacheMode;
use propersim::sim::setup::{open_engine, Open};
use propersim::world::maze::Maze;
use serde_json::Value;

fn config(fs: &Path, storage: &Path, sim: &str) -> Config {
    let mut cfg = Config::default();
    cfg.paths.storage = storage.to_path_buf();
    cfg.paths.seeds = Some(fs.join("storage"));
    cfg.paths.assets = fs.join("static_dirs/assets");
    cfg.paths.temp_storage = storage.join("../temp_storage");
    cfg.sim.sim = sim.into();
    cfg.set_all_providers(ProviderKind::Scripted);
    cfg
}

const USER_KEYS: [&str; 8] = [
    "movement",
    "pronunciatio",
    "description",
    "chat",
    "user_action_for_suggestion",
    "suggestion",
    "eval_res_score",
    "eval_res_reason",
];

#[tokio::test(flavor = "multi_thread")]
async fn one_scripted_day_keeps_every_contract() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let tmp = tempfile::tempdir().unwrap();
    let storage = tmp.path().join("storage");
    let cfg = config(&fs, &storage, "day");
    let mut engine = open_engine(&cfg, Open::Fork, CacheMode::Off).unwrap();
    let summary =
        propersim::sim::headless::run(&mut engine, 576, false, Arc::new(AtomicBool::new(false))).await.unwrap();
    assert_eq!(summary.steps, 576);
    let maze = Maze::load(&cfg.paths.assets).unwrap();
    let sim = storage.join("day");

    let mut prev_tile: Option<[i64; 2]> = None;
    let (mut suggested, mut asleep_steps, mut objects_hit) = (0, 0, 0);
    for step in 0..576u64 {
        let m: Value =
            serde_json::from_str(&std::fs::read_to_string(sim.join(format!("movement/{step}.json"))).unwrap()).unwrap();
        // Time advances 150 s a step from midnight.
        let secs = step * 150;
        let want = format!("February 13, 2025, {:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
        assert_eq!(m["meta"]["curr_time"], want);
        assert!(m["meta"]["is_john_walking"] == "yes" || m["meta"]["is_john_walking"] == "no");
        assert!(m["meta"]["number_of_action_tokens"].is_u64());
        for name in ["John Lin", "Eddy Lin"] {
            let p = &m["persona"][name];
            for k in USER_KEYS {
                assert!(p.get(k).is_some(), "step {step}: {name} lacks {k}");
            }
            assert!(p["description"].as_str().unwrap().contains(" @ "));
        }
        let john = &m["persona"]["John Lin"];
        assert_eq!(john["suggestion"], "", "no stale assistant fields on the user");
        assert!(john["eval_res_score"].is_null());
        // Walks follow real paths: every step of the walked path is adjacent and walkable.
        let path: Vec<[i64; 2]> = serde_json::from_value(john["path"].clone()).unwrap();
        if let Some(pt) = prev_tile {
            assert_eq!(path[0], pt, "step {step}: the walk starts where the last one ended");
        }
        for w in path.windows(2) {
            assert_eq!((w[0][0] - w[1][0]).abs() + (w[0][1] - w[1][1]).abs(), 1, "step {step}: not adjacent");
            assert!(maze.is_walkable(w[1][0] as usize, w[1][1] as usize), "step {step}: walked into a wall");
        }
        let tile: [i64; 2] = serde_json::from_value(john["movement"].clone()).unwrap();
        assert_eq!(*path.last().unwrap(), tile);
        prev_tile = Some(tile);
        // Arrived actions are on a tile of their address.
        let desc = john["description"].as_str().unwrap();
        let address = desc.split(" @ ").nth(1).unwrap();
        if m["meta"]["is_john_walking"] == "no"
            && maze.address_tiles(address).contains(&(tile[0] as usize, tile[1] as usize))
        {
            objects_hit += 1;
        }
        let eddy = &m["persona"]["Eddy Lin"];
        let asleep = desc.starts_with("sleeping");
        if asleep {
            asleep_steps += 1;
            assert_eq!(eddy["suggestion"], "", "step {step}: no suggestion while the user sleeps");
            assert!(eddy["eval_res_score"].is_null());
        } else {
            suggested += 1;
            let s: f64 = eddy["eval_res_score"].as_str().unwrap().parse().unwrap();
            assert!((0.0..=4.0).contains(&s));
            assert!(!eddy["suggestion"].as_str().unwrap().is_empty());
        }
    }
    assert!(asleep_steps > 100 && suggested > 200, "asleep {asleep_steps}, awake {suggested}");
    assert!(objects_hit as f64 > 0.9 * 576.0, "only {objects_hit} steps on the action's own tiles");

    // Preference pairs: TRL's conversational format, valid JSON answers, no ties.
    let pairs: Vec<Value> = propersim::storage::read_jsonl(&sim.join("preferences/day_01.jsonl")).unwrap();
    assert!(!pairs.is_empty());
    for p in &pairs {
        assert_eq!(p["prompt"].as_array().unwrap().len(), 2);
        for side in ["chosen", "rejected"] {
            let msgs = p[side].as_array().unwrap();
            assert_eq!(msgs.len(), 1);
            assert_eq!(msgs[0]["role"], "assistant");
            let answer: Value = serde_json::from_str(msgs[0]["content"].as_str().unwrap()).unwrap();
            assert!(answer["Suggestion"].is_string());
        }
        assert!(p["chosen_score"].as_f64().unwrap() > p["rejected_score"].as_f64().unwrap());
    }
    let records: Vec<Value> = propersim::storage::read_jsonl(&sim.join("records.jsonl")).unwrap();
    assert_eq!(records.len(), suggested);
    let untied = records.iter().filter(|r| r["scores"][0] != r["scores"][1]).count();
    assert_eq!(untied, pairs.len(), "every untied step gives a pair, every tie is dropped");

    // Saved persona files load back identically.
    let user_dir = sim.join("personas/John Lin/bootstrap_memory");
    let scratch: Value =
        serde_json::from_str(&std::fs::read_to_string(user_dir.join("scratch.json")).unwrap()).unwrap();
    assert_eq!(scratch["daily_req"].as_array().map(|a| !a.is_empty()), Some(true));
    let sched: Vec<(String, u32)> = serde_json::from_value(scratch["f_daily_schedule"].clone()).unwrap();
    assert_eq!(sched.iter().map(|s| s.1).sum::<u32>(), 1440, "the schedule covers 24 h");
    assert!(scratch["criteria"].is_object(), "the rubric is kept");
    let a = propersim::user::UserAgent::load(&user_dir).unwrap();
    let dir2 = tmp.path().join("resaved");
    std::fs::create_dir_all(&dir2).unwrap();
    let mut b = propersim::user::UserAgent::load(&user_dir).unwrap();
    b.save(&dir2, engine.clock().time(576)).unwrap();
    for f in ["spatial_memory.json", "associative_memory/nodes.json", "associative_memory/embeddings.json"] {
        assert_eq!(
            std::fs::read(user_dir.join(f)).unwrap(),
            std::fs::read(dir2.join(f)).unwrap(),
            "{f} round-trips byte for byte"
        );
    }
    assert!(a.memory.nodes.len() > 10, "memories grew: {}", a.memory.nodes.len());
    assert!(a.spatial.knows("the Ville:Lin family's house:kitchen"), "the kitchen was perceived");
    let kinds: HashSet<&str> = a.memory.nodes.iter().map(|n| n.kind.as_str()).collect();
    assert!(kinds.contains("event") && kinds.contains("thought"));
}

#[tokio::test(flavor = "multi_thread")]
async fn forced_norec_ratio_holds() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let tmp = tempfile::tempdir().unwrap();
    let storage = tmp.path().join("storage");
    let mut cfg = config(&fs, &storage, "norec");
    cfg.sim.forced_norec_ratio = NoRecRatio::P70;
    let mut engine = open_engine(&cfg, Open::Fork, CacheMode::Off).unwrap();
    propersim::sim::headless::run(&mut engine, 576, false, Arc::new(AtomicBool::new(false))).await.unwrap();
    let records: Vec<Value> = propersim::storage::read_jsonl(&storage.join("norec/records.jsonl")).unwrap();
    let forced = records.iter().filter(|r| r["forced"][0] == true).count() as f64 / records.len() as f64;
    assert!(records.len() > 200);
    assert!((forced - 0.7).abs() < 0.08, "forced share {forced}");
    assert!(records.iter().all(|r| r["forced"][1] == false));
    for r in records.iter().filter(|r| r["forced"][0] == true) {
        assert_eq!(r["candidates"][0], "No Recommendation");
    }
}

#[test]
fn the_example_config_parses_to_the_defaults() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("propersim.toml");
    let cfg = Config::from_toml(&std::fs::read_to_string(&p).unwrap(), &p).unwrap();
    assert_eq!(cfg, Config::default());
    // Uncommenting every [sim] line must parse too (the example stays in sync with the keys).
    let text = std::fs::read_to_string(&p).unwrap();
    let mut uncommented = String::new();
    let mut in_sim = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_sim = line == "[sim]";
        }
        match line.strip_prefix("# ") {
            Some(rest) if in_sim && rest.contains(" = ") && !rest.starts_with(' ') => uncommented.push_str(rest),
            _ => uncommented.push_str(line),
        }
        uncommented.push('\n');
    }
    let full = Config::from_toml(&uncommented, &p).unwrap();
    assert_eq!(full.sim.budget_usd, Some(30.0));
}

#[test]
fn cli_reports_bad_config_clearly() {
    let out = std::process::Command::new(common::bin())
        .args(["run", "--novis", "--set", "memory_level=XYZ"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("memory_level") && err.contains("ASC8R2"), "{err}");
    let out =
        std::process::Command::new(common::bin()).args(["run", "--novis", "--provider", "telepathy"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("scripted"), "{err}");
}

#[test]
fn rewriting_a_seed_keeps_python_formatting() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real seeds)");
    // The seed files the original wrote with json.dumps(indent=2) come back byte for byte.
    for rel in ["reverie/meta.json", "personas/John Lin/bootstrap_memory/spatial_memory.json"] {
        let p = fs.join("storage/base_the_ville_persona_7").join(rel);
        let original = std::fs::read_to_string(&p).unwrap();
        let v: Value = serde_json::from_str(&original).unwrap();
        assert_eq!(
            propersim::storage::pyjson::to_string_indent2(&v).unwrap(),
            original.trim_end_matches('\n'),
            "{rel}"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let sd =
        propersim::storage::SimDir::fork(tmp.path(), &[fs.join("storage")], "base_the_ville_persona_7", "copy", false)
            .unwrap();
    let meta = sd.meta().unwrap();
    assert_eq!(meta.fork_sim_code, "base_the_ville_persona_7");
    assert_eq!(meta.persona_names, vec!["John Lin", "Eddy Lin"]);
    sd.write_meta(&meta).unwrap();
    assert_eq!(sd.meta().unwrap(), meta);
    let env = sd.read_env(0).unwrap().unwrap();
    assert_eq!((env["John Lin"].x, env["John Lin"].y), (5, 10));
    sd.write_env(1, &env).unwrap();
    let original_env = std::fs::read_to_string(fs.join("storage/base_the_ville_persona_7/environment/0.json")).unwrap();
    assert_eq!(std::fs::read_to_string(sd.env_path(1)).unwrap(), original_env.trim_end());
    assert!(
        propersim::storage::SimDir::fork(tmp.path(), &[fs.join("storage")], "base_the_ville_persona_7", "copy", false)
            .is_err(),
        "no silent overwrite"
    );
}
