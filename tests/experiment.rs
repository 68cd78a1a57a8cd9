//! `propersim experiment` and `report --experiment` through the real binary on the real map and
//! seeds (scripted brain): the curve of a run killed with -9 and resumed equals an uninterrupted
//! run's, byte for byte; the curve equals each arm's own report; arms differ only in training;
//! the page lists and draws it; bad arguments and changed reruns get clear messages.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const SEED: &str = "base_the_ville_persona_1";

fn experiment_cmd(fs: &Path, storage: &Path, name: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(common::bin());
    c.args(["experiment", "--name", name, "--fork", SEED, "--provider", "scripted", "-q"]);
    common::folder_args(&mut c, fs, storage.parent().expect("storage has a parent"), "temp_storage");
    c.args(extra).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn steps_done(storage: &Path, sims: &[&str]) -> usize {
    sims.iter().map(|s| std::fs::read_dir(storage.join(s).join("movement")).map(|d| d.count()).unwrap_or(0)).sum()
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn a_killed_experiment_resumes_to_the_uninterrupted_curve() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let tmp = tempfile::tempdir().unwrap();
    let (whole, cut) = (tmp.path().join("whole/storage"), tmp.path().join("cut/storage"));
    let args = ["--arms", "dpo,none", "--days", "2"];
    let out = ok(experiment_cmd(&fs, &whole, "e", &args).output().unwrap());
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.contains("dpo: score succ recs/h") && table.contains("none: score succ recs/h"), "{table}");

    // kill -9 part-way through day 1 of both arms, again in day 2, then run to the end.
    let sims = ["e_dpo", "e_none"];
    for at_least in [300, 1400] {
        let mut child = experiment_cmd(&fs, &cut, "e", &args).spawn().unwrap();
        let t0 = Instant::now();
        while steps_done(&cut, &sims) < at_least {
            assert!(t0.elapsed() < Duration::from_secs(300), "the experiment made no progress");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(steps_done(&cut, &sims) < 4 * 576, "the kill came too late");
    }
    ok(experiment_cmd(&fs, &cut, "e", &args).output().unwrap());
    for f in ["curve.json", "curve.csv", "curve.svg"] {
        let (a, b) = (read(&whole.join("experiments/e").join(f)), read(&cut.join("experiments/e").join(f)));
        assert!(a == b, "{f} of the resumed experiment differs from the uninterrupted one");
    }
    for sim in sims {
        for f in ["records.jsonl", "preferences/day_01.jsonl", "preferences/day_02.jsonl"] {
            assert!(read(&whole.join(sim).join(f)) == read(&cut.join(sim).join(f)), "{sim}/{f} differs");
        }
    }

    // The curve is each arm's own report, day by day.
    let curve: Value = serde_json::from_slice(&read(&whole.join("experiments/e/curve.json"))).unwrap();
    assert_eq!(curve["fork"], SEED);
    for (arm, sim) in [("dpo", "e_dpo"), ("none", "e_none")] {
        let out =
            ok(Command::new(common::bin()).args(["report", sim, "--json", "--storage"]).arg(&whole).output().unwrap());
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let days = curve["arms"][arm].as_array().unwrap();
        assert_eq!(days.len(), 2, "{arm}: two days");
        for (i, d) in days.iter().enumerate() {
            assert_eq!(d["day"], i as u64 + 1);
            assert_eq!(d["complete"], true);
            for k in ["mean_score", "success_rate", "recs_per_awake_hour", "date"] {
                assert_eq!(d[k], report[i][k], "{arm} day {}: {k}", i + 1);
            }
            assert!(d["mean_score"].as_f64().is_some_and(|v| (0.0..=4.0).contains(&v)), "{d}");
            assert!(d["rec_dimensions"].as_object().is_some_and(|m| !m.is_empty()), "{d}");
            // The scripted assistant is not trained: no pairs trained, no loss, no MMLU.
            assert!(d["pairs_trained"].is_null() && d["train_loss"].is_null() && d["mmlu"].is_null(), "{d}");
        }
    }
    // Same seed, same engine seed, no training: the arms are the same run.
    assert_eq!(curve["arms"]["dpo"], curve["arms"]["none"]);
    assert!(read(&whole.join("e_dpo/records.jsonl")) == read(&whole.join("e_none/records.jsonl")));
    let manifest: Value = serde_json::from_slice(&read(&whole.join("experiments/e/experiment.json"))).unwrap();
    assert_eq!(manifest["arms"], serde_json::json!(["dpo", "none"]));
    let meta: Value = serde_json::from_slice(&read(&whole.join("e_dpo/reverie/meta.json"))).unwrap();
    assert!(meta["train_mode"].as_str().unwrap().contains("_DPO_"), "{meta}");
    let meta: Value = serde_json::from_slice(&read(&whole.join("e_none/reverie/meta.json"))).unwrap();
    assert!(meta["train_mode"].as_str().unwrap().contains("_wo_train_"), "{meta}");

    // `report --experiment` rewrites the same files and prints the table.
    let out = ok(Command::new(common::bin())
        .args(["report", "--experiment", "e", "--storage"])
        .arg(&whole)
        .output()
        .unwrap());
    assert!(String::from_utf8_lossy(&out.stdout).contains("/experiments/e/"));
    assert!(read(&whole.join("experiments/e/curve.json")) == read(&cut.join("experiments/e/curve.json")));

    // A finished experiment rerun runs nothing.
    let out = ok(experiment_cmd(&fs, &cut, "e", &args).output().unwrap());
    assert!(stderr(&out).contains("Ran 0 steps"), "{}", stderr(&out));

    // The pages list it and draw both arms.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut opts =
            propersim::web::ServeOptions::new(Path::new(env!("CARGO_MANIFEST_DIR")), fs.join("static_dirs/assets"));
        opts.storage = whole.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = propersim::web::router(propersim::web::AppState::new(opts));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let get = |path: &'static str| async move {
            let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        };
        let (status, list) = get("/experiments/").await;
        assert_eq!(status, 200);
        assert!(list.contains(r#"href="/experiments/e/""#) && list.contains("dpo, none"), "{list}");
        let (status, page) = get("/experiments/e/").await;
        assert_eq!(status, 200, "{page}");
        assert!(page.contains(r#"id="mean-score-dpo""#) && page.contains(r#"id="mean-score-none""#), "{page}");
        assert!(page.contains(r#"href="/replay/e_none/0/""#), "{page}");
        let (status, _) = get("/experiments/nope/").await;
        assert_eq!(status, 404);
        let (status, landing) = get("/").await;
        assert_eq!(status, 200);
        assert!(landing.contains(r#"href="/experiments/""#));
    });
}

#[test]
fn bad_arguments_and_changed_reruns_get_clear_messages() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let tmp = tempfile::tempdir().unwrap();
    let storage = tmp.path().join("storage");
    let cases: [(&[&str], &str); 3] = [
        (&["--arms", "dpo,dpo"], "the arm `dpo` is listed twice"),
        (&["--arms", "ppo"], "`ppo` is not an arm"),
        (&["--days", "0"], "--days"),
    ];
    for (args, want) in cases {
        let out = experiment_cmd(&fs, &storage, "b", args).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want) && !err.contains("panicked"), "{args:?}: {err}");
    }
    let out = experiment_cmd(&fs, &storage, "b", &["--sim", "x"]).output().unwrap();
    assert!(!out.status.success() && stderr(&out).contains("drop --sim"), "{}", stderr(&out));
    let out = experiment_cmd(&fs, &storage, "../b", &[]).output().unwrap();
    assert!(!out.status.success() && stderr(&out).contains("invalid experiment name"), "{}", stderr(&out));
    assert!(!storage.join("experiments").exists(), "nothing ran");

    // A rerun with other arms, another seed or other settings is refused.
    ok(experiment_cmd(&fs, &storage, "b", &["--arms", "kto,none", "--days", "1"]).output().unwrap());
    let out = experiment_cmd(&fs, &storage, "b", &["--arms", "dpo,none", "--days", "1"]).output().unwrap();
    assert!(stderr(&out).contains("has the arms kto,none, not dpo,none"), "{}", stderr(&out));
    let out = experiment_cmd(&fs, &storage, "b", &["--arms", "kto,none", "--set", "ranking=false"]).output().unwrap();
    assert!(stderr(&out).contains("was started with other settings"), "{}", stderr(&out));
    let out = Command::new(common::bin())
        .args(["report", "--experiment", "nope", "--storage"])
        .arg(&storage)
        .output()
        .unwrap();
    assert!(!out.status.success() && stderr(&out).contains("no experiment `nope`"), "{}", stderr(&out));
}

/// The configurations README points researchers at load as shipped (run from the repository
/// root, as their headers say), and the one with a model evaluator uses the cached layout.
#[test]
fn the_shipped_configurations_load() {
    use propersim::config::{Config, EvaluatorLayout};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let cfg = Config::load(Some(&path)).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        let want = if path.ends_with("learn-cpu-smollm2-evaluator.toml") {
            EvaluatorLayout::RubricFirst
        } else {
            EvaluatorLayout::Original
        };
        assert_eq!(cfg.sim.evaluator_layout, want, "{}", path.display());
        seen += 1;
    }
    assert_eq!(seen, 2, "configs/ holds learn-cpu.toml and learn-cpu-smollm2-evaluator.toml");
}
