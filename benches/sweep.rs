//! Sweep benchmarks, each against its baseline measured in the same run (`cargo bench --bench
//! sweep -- MODE`):
//!
//! - `scripted`: 32 personas × 14 scripted days in one `propersim sweep` process, beside 32
//!   sequential `propersim run --days 1` processes scaled by 14.
//! - `mock`: 32 personas × 1 day with every role on a loopback OpenAI-compatible server that
//!   answers each task validly after 100 ms, beside one persona's day × 32.
//!
//! Both also print, from the ledger of the single persona-day, the LLM calls and tokens one
//! persona-day takes (docs/SCALE.md). Options: `--personas N`, `--days D`, `--latency-ms MS`.
//! Sims go under `PROPERSIM_BENCH_DIR` (default: /dev/shm when present, else the temp folder).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;

struct Setup {
    fs: PathBuf,
    dir: tempfile::TempDir,
    personas: u32,
    days: u64,
    latency_ms: u64,
}

impl Setup {
    fn storage(&self, what: &str) -> PathBuf {
        self.dir.path().join(what).join("storage")
    }

    /// A `propersim` command on the shared map and seeds, writing into `storage`.
    fn cmd(&self, storage: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(common::bin());
        c.args(args)
            .arg("--storage")
            .arg(storage)
            .arg("--seeds")
            .arg(self.fs.join("storage"))
            .arg("--assets")
            .arg(self.fs.join("static_dirs/assets"))
            .arg("--temp-storage")
            .arg(storage.with_file_name("temp_storage"));
        c
    }
}

/// CPU seconds (user + system) of this process's finished children, from /proc/self/stat, so
/// a figure taken on a shared machine can be told apart from the load around it.
fn children_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    // After the command name: state is field 3, cutime 16 and cstime 17 (1-based), in ticks of 1/100 s.
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(16) + ticks(17)) / 100.0
}

/// Wall and CPU seconds of a run.
#[derive(Default, Clone, Copy)]
struct Took {
    wall: f64,
    cpu: f64,
}

impl std::ops::AddAssign for Took {
    fn add_assign(&mut self, o: Took) {
        self.wall += o.wall;
        self.cpu += o.cpu;
    }
}

/// Run to completion and return the wall and CPU time.
fn timed(mut c: Command) -> Took {
    let (t0, c0) = (Instant::now(), children_cpu());
    let out = c.output().expect("starting propersim");
    let took = Took { wall: t0.elapsed().as_secs_f64(), cpu: children_cpu() - c0 };
    assert!(out.status.success(), "{:?} failed:\n{}", c, String::from_utf8_lossy(&out.stderr));
    took
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// LLM calls and tokens of one sim's ledger, by role.
fn ledger_summary(sim: &Path) -> String {
    let mut by_role: BTreeMap<String, [u64; 4]> = BTreeMap::new();
    for line in std::fs::read_to_string(sim.join("llm_ledger.jsonl")).expect("a ledger").lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        let e = by_role.entry(v["role"].as_str().unwrap_or("?").to_string()).or_default();
        e[0] += 1;
        e[1] += v["attempts"].as_u64().unwrap_or(1);
        e[2] += v["prompt_tokens"].as_u64().unwrap_or(0);
        e[3] += v["completion_tokens"].as_u64().unwrap_or(0);
    }
    let mut out = String::from("  role        tasks  requests  prompt tok  completion tok\n");
    let mut total = [0u64; 4];
    for (role, t) in &by_role {
        out += &format!("  {role:<10} {:>6} {:>9} {:>11} {:>15}\n", t[0], t[1], t[2], t[3]);
        for i in 0..4 {
            total[i] += t[i];
        }
    }
    out += &format!("  {:<10} {:>6} {:>9} {:>11} {:>15}\n", "total", total[0], total[1], total[2], total[3]);
    out
}

fn scripted(s: &Setup) {
    let (n, days) = (s.personas, s.days);
    println!("load average before: {}", load());
    // Baseline: one process per persona, one day each, one after the other.
    let base = s.storage("single");
    let mut single = Took::default();
    for k in 1..=n {
        let seed = propersim::sim::sweep::persona_engine_seed(42, k).to_string();
        let (fork, sim) = (format!("base_the_ville_persona_{k}"), format!("single_p{k}"));
        let c = s.cmd(
            &base,
            &[
                "run",
                "--novis",
                "-q",
                "--provider",
                "scripted",
                "--fork",
                &fork,
                "--sim",
                &sim,
                "--days",
                "1",
                "--set",
                &format!("seed={seed}"),
            ],
        );
        single += timed(c);
    }
    let scale = days as f64;
    println!(
        "baseline: {n} sequential single runs of 1 day: {:.1} s wall, {:.1} s CPU ({:.3} s wall per persona-day)",
        single.wall,
        single.cpu,
        single.wall / n as f64
    );
    println!("  scaled to {n} x {days} days: {:.1} s wall, {:.1} s CPU", single.wall * scale, single.cpu * scale);
    println!("one persona-day's ledger (persona 1, scripted: tokens are chars/4 estimates):");
    print!("{}", ledger_summary(&base.join("single_p1")));

    let storage = s.storage("sweep");
    let personas = format!("1-{n}");
    let days_s = days.to_string();
    let c = s.cmd(
        &storage,
        &["sweep", "--name", "bench", "-q", "--provider", "scripted", "--personas", &personas, "--days", &days_s],
    );
    let sweep = timed(c);
    let steps = n as u64 * days * 576;
    println!(
        "sweep: {n} personas x {days} days in one process: {:.1} s wall ({:.0} steps/s, {:.3} ms/step), {:.1} s CPU",
        sweep.wall,
        steps as f64 / sweep.wall,
        sweep.wall * 1000.0 / steps as f64,
        sweep.cpu
    );
    println!(
        "  {:.2}x faster than the scaled sequential baseline (wall); CPU {:.2}x the baseline's",
        single.wall * scale / sweep.wall,
        sweep.cpu / (single.cpu * scale)
    );
    // The same sims one at a time in one process: what the days themselves cost (later days
    // retrieve over more memory), apart from running sims side by side.
    let storage1 = s.storage("one_at_a_time");
    let c = s.cmd(
        &storage1,
        &[
            "sweep",
            "--name",
            "bench",
            "-q",
            "--provider",
            "scripted",
            "--personas",
            &personas,
            "--days",
            &days_s,
            "--concurrency",
            "1",
        ],
    );
    let one = timed(c);
    println!(
        "same sweep with --concurrency 1 (sims one after another): {:.1} s wall, {:.1} s CPU; the concurrent sweep is {:.2}x faster (wall)",
        one.wall,
        one.cpu,
        one.wall / sweep.wall
    );
    println!("load average after: {}", load());
    println!("persona 1's ledger in the sweep, by day (requests / prompt tokens / completion tokens):");
    print!("{}", ledger_by_day(&storage.join("bench_p1")));
}

/// Requests and tokens of one sim's ledger per simulated day (576 steps).
fn ledger_by_day(sim: &Path) -> String {
    let mut days: BTreeMap<u64, [u64; 3]> = BTreeMap::new();
    for line in std::fs::read_to_string(sim.join("llm_ledger.jsonl")).expect("a ledger").lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        let e = days.entry(v["step"].as_u64().unwrap_or(0) / 576 + 1).or_default();
        e[0] += v["attempts"].as_u64().unwrap_or(1);
        e[1] += v["prompt_tokens"].as_u64().unwrap_or(0);
        e[2] += v["completion_tokens"].as_u64().unwrap_or(0);
    }
    days.iter().map(|(d, t)| format!("  day {d:>2}: {:>6} {:>10} {:>8}\n", t[0], t[1], t[2])).collect()
}

fn mock(s: &Setup) {
    let n = s.personas;
    // The server runs on its own threads, as a real one would.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let latency = Duration::from_millis(s.latency_ms);
    let opts = common::mock_llm::MockOptions { latency, embed_latency: latency, imperfect: false };
    let (base_url, mock) = rt.block_on(common::mock_llm::start_mock_with(opts));
    let cfg_path = s.dir.path().join("mock.toml");
    let mut toml = String::from("[sim]\ntrain_method = \"none\"\n");
    for role in ["user", "evaluator", "assistant", "summarizer", "embedding"] {
        // A high limit: the point is how many requests the sims keep in flight.
        toml += &format!(
            "[roles.{role}]\nprovider = \"openai\"\nmodel = \"mock-{role}\"\nbase_url = \"{base_url}\"\nconcurrency = 4096\n"
        );
    }
    std::fs::write(&cfg_path, toml).unwrap();
    let cfg = cfg_path.to_str().unwrap();

    let base = s.storage("single");
    let c = s.cmd(
        &base,
        &["--config", cfg, "run", "--novis", "-q", "--fork", "base_the_ville_persona_1", "--sim", "one", "--days", "1"],
    );
    println!("load average before: {}", load());
    let one = timed(c).wall;
    let count = || mock.n.load(Ordering::SeqCst) + mock.embeds.load(Ordering::SeqCst);
    let requests_one = count();
    println!(
        "baseline: one persona's day against the {} ms mock: {one:.1} s, {requests_one} requests; x {n} = {:.0} s",
        s.latency_ms,
        one * n as f64
    );
    println!("one persona-day's ledger (persona 1, mock server's token counts):");
    print!("{}", ledger_summary(&base.join("one")));

    let storage = s.storage("sweep");
    let personas = format!("1-{n}");
    *mock.total_in_flight.lock().unwrap() = (0, 0);
    let c =
        s.cmd(&storage, &["--config", cfg, "sweep", "--name", "mock", "-q", "--personas", &personas, "--days", "1"]);
    let sweep = timed(c).wall;
    let requests = count() - requests_one;
    let peak = mock.total_in_flight.lock().unwrap().1;
    println!(
        "sweep: {n} personas x 1 day in one process: {sweep:.1} s, {requests} requests ({:.0}/s), at most {peak} in flight",
        requests as f64 / sweep
    );
    println!("  {:.1}x faster than {n} sequential persona-days", one * n as f64 / sweep);
    println!("load average after: {}", load());
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let mode = args.first().cloned().unwrap_or_default();
    let opt = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} takes a number")))
            .unwrap_or(default)
    };
    let fs = need!(common::frontend_server(), "../shared/frontend_server (real map and seeds)");
    let root = std::env::var_os("PROPERSIM_BENCH_DIR").map(PathBuf::from).unwrap_or_else(|| {
        if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        }
    });
    let dir = tempfile::Builder::new().prefix("propersim-sweep-bench-").tempdir_in(&root).unwrap();
    println!("sims under {} (removed afterwards)", dir.path().display());
    let days_default = if mode == "scripted" { 14 } else { 1 };
    let s = Setup {
        fs,
        dir,
        personas: opt("--personas", 32) as u32,
        days: opt("--days", days_default),
        latency_ms: opt("--latency-ms", 100),
    };
    match mode.as_str() {
        "scripted" => scripted(&s),
        "mock" => mock(&s),
        _ => eprintln!("usage: cargo bench --bench sweep -- scripted|mock [--personas N] [--days D] [--latency-ms MS]"),
    }
}
