//! End-to-end test in headless Chromium (Debian's `chromium` + `chromedriver`, driven through
//! the WebDriver HTTP API): a live run on simulator_home advances ≥5 steps with actions and a
//! suggestion shown, survives a reload, then the replay and the demo of that run play.
//! Screenshots go to `$PROPERSIM_SCREENSHOT_DIR` (default `target/screenshots`).
//!
//! Needs: /usr/bin/chromium, /usr/bin/chromedriver, the original's map assets (/work/shared), and
//! `npm ci` (Phaser from node_modules). Missing ones → `PROPERSIM-SKIP:`.

mod common;

use std::fs;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use propersim::storage::compress::compress;
use std::sync::atomic::AtomicBool;

use propersim::llm::cache::CacheMode;
use propersim::sim::live::LiveSim;
use propersim::sim::setup::{open_engine, Open};
use propersim::storage::sim::copy_tree;
use propersim::web::{router, AppState, ServeOptions};
use serde_json::{json, Value};

const SIM: &str = "e2e_sim";
const SEED: &str = "base_the_ville_persona_1";

/// The ONE place that builds the live simulation behind simulator_home: the real engine on the
/// scripted brain. The night is run headless first (the assistant is quiet while the user
/// sleeps), so the page starts at 08:20 with suggestions to show. Returns the first live step.
async fn start_live_sim(shared: &Path, storage: &Path, sim: &str) -> (Arc<dyn LiveSim>, u64) {
    let mut cfg = propersim::config::Config::default();
    cfg.paths.storage = storage.to_path_buf();
    cfg.paths.assets = shared.join("static_dirs/assets");
    cfg.paths.temp_storage = storage.join("../temp_storage");
    cfg.sim.sim = sim.into();
    cfg.set_all_providers(propersim::config::ProviderKind::Scripted);
    let mut engine = open_engine(&cfg, Open::Resume, CacheMode::Off).unwrap();
    let start = 200;
    propersim::sim::headless::run(&mut engine, start, false, Arc::new(AtomicBool::new(false))).await.unwrap();
    engine.write_next_environment().unwrap();
    let f = propersim::sim::follow::follower(&engine);
    let f2 = f.clone();
    tokio::spawn(async move { propersim::sim::follow::follow(engine, f2, u64::MAX, false).await });
    (f, start)
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Standard base64 (the WebDriver screenshot encoding).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

struct Driver {
    child: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    /// End the WebDriver session first (so chromedriver closes Chromium), then stop chromedriver.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let addr = self.base.trim_start_matches("http://").to_string();
        if let Ok(mut conn) = std::net::TcpStream::connect(&addr) {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let req = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            if conn.write_all(req.as_bytes()).is_ok() {
                let _ = conn.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start(profile: &Path) -> Driver {
        let port = free_port();
        let child = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let mut driver = Driver { child, base, session: String::new(), http };
        let t0 = Instant::now();
        while driver.http.get(format!("{}/status", driver.base)).send().await.is_err() {
            assert!(t0.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1100",
        ];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}}}});
        let v: Value = driver
            .http
            .post(format!("{}/session", driver.base))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        driver.session = v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).to_string();
        driver
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{path}", self.base, self.session);
        let req = self.http.request(method, url);
        let req = if body.is_null() { req } else { req.json(&body) };
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        if v["value"].get("error").is_some() {
            panic!("webdriver {path}: {v}");
        }
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "url", json!({"url": url})).await;
    }

    async fn js(&self, script: &str) -> Value {
        self.cmd(reqwest::Method::POST, "execute/sync", json!({"script": script, "args": []})).await
    }

    async fn text(&self, id: &str) -> String {
        self.js(&format!("const e = document.getElementById({id:?}); return e ? e.textContent : null;"))
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    async fn step(&self) -> u64 {
        self.text("step").await.trim().parse().unwrap_or(0)
    }

    /// Wait until `cond` holds on the page (checked every 200 ms), or fail with the page's status line.
    async fn wait_for(&self, what: &str, secs: u64, script: &str) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.js(script).await;
            if v.as_bool() == Some(true) || (!v.is_null() && v.as_bool().is_none()) {
                return v;
            }
            if t0.elapsed() > Duration::from_secs(secs) {
                panic!(
                    "timed out waiting for {what}; step={} status={:?}",
                    self.step().await,
                    self.text("status").await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn screenshot(&self, name: &str) {
        let dir = std::env::var_os("PROPERSIM_SCREENSHOT_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join("target/screenshots"));
        fs::create_dir_all(&dir).unwrap();
        let b64 = self.cmd(reqwest::Method::GET, "screenshot", Value::Null).await;
        let png = base64_decode(b64.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "screenshot is a PNG");
        fs::write(dir.join(name), png).unwrap();
    }

    /// The Phaser scene loaded the map tilesets and every persona's own sheet, and draws sprites.
    async fn assert_scene_rendered(&self, sheets: &[&str]) {
        let script = format!(
            "const g = window.propersimGame; if (!g || !g.scene || !g.scene.isActive('ville')) return false;
             const need = {sheets:?}.map(s => 'sheet_' + s).concat(['CuteRPG_Field_B', 'interiors_pt1', 'walls', 'speech_bubble']);
             const missing = need.filter(k => !g.textures.exists(k));
             if (missing.length) return 'missing ' + missing.join(',');
             const sc = g.scene.getScene('ville');
             const sprites = sc.children.list.filter(o => o.type === 'Sprite' && o.visible).length;
             const layers = sc.children.list.filter(o => o.type === 'TilemapLayer').length;
             return sprites >= {n} && layers >= 10;",
            n = sheets.len()
        );
        let v = self.wait_for("the scene to render", 30, &script).await;
        assert_eq!(v, json!(true), "scene check: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reload_replay_and_demo_in_chromium() {
    let Some(shared) = common::frontend_server() else {
        println!("PROPERSIM-SKIP: /work/shared/frontend_server (map assets and seeds) not found; set PROPERSIM_SHARED");
        return;
    };
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        if !Path::new(tool).exists() {
            println!("PROPERSIM-SKIP: {tool} missing (apt-get install chromium chromium-driver)");
            return;
        }
    }
    let phaser_dir = repo().join("node_modules/phaser/dist");
    if !phaser_dir.join("phaser.min.js").is_file() {
        println!("PROPERSIM-SKIP: node_modules/phaser missing (run npm ci)");
        return;
    }

    let root = tempfile::tempdir().unwrap();
    let storage = root.path().join("storage");
    copy_tree(&shared.join("storage").join(SEED), &storage.join(SIM)).unwrap();
    let (live, start) = start_live_sim(&shared, &storage, SIM).await;
    let mut opts = ServeOptions::new(root.path(), shared.join("static_dirs/assets"));
    opts.static_dir = repo().join("static");
    opts.templates = repo().join("templates");
    // Phaser from our own route, as `serve` does by default: no network needed.
    opts.phaser_file = phaser_dir.join("phaser.min.js");
    opts.live = Some(live.clone());
    let compressed = opts.compressed.clone();
    let app = router(AppState::new(opts));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let profile = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let d = Driver::start(profile.path()).await;
    let lap = |what: &str| println!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f32());
    lap("browser started");

    // Live run: at least 5 steps with actions and a suggestion.
    d.goto(&format!("{base}/simulator_home")).await;
    d.assert_scene_rendered(&["John_Lin", "Eddy_Lin"]).await;
    d.wait_for("5 steps", 90, &format!("return Number(document.getElementById('step').textContent) >= {}", start + 5))
        .await;
    let action = d.text("current_action__John_Lin").await;
    assert!(!action.trim().is_empty() && action != "—", "John's action shown: {action:?}");
    assert!(!d.text("target_address__Eddy_Lin").await.trim().is_empty());
    let suggestion = d.text("suggestion").await;
    let step_shown = d.step().await;
    let shown_in_files: Vec<String> = (start..step_shown)
        .filter_map(|s| fs::read_to_string(storage.join(SIM).join(format!("movement/{s}.json"))).ok())
        .map(|t| {
            serde_json::from_str::<Value>(&t).unwrap()["persona"]["Eddy Lin"]["suggestion"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        !suggestion.trim().is_empty() && shown_in_files.iter().any(|s| suggestion.contains(s.as_str())),
        "suggestion shown: {suggestion:?}, recorded: {shown_in_files:?}"
    );
    assert!(!d.text("eval_score").await.contains('—'));
    assert!(d.text("game-time-content").await.starts_with("February 13, 2025"));
    lap("live: 5 steps");
    d.screenshot("live.png").await;

    // Reload mid-run: the page resumes at the engine's step and keeps going.
    let before = d.step().await;
    d.js("location.reload(); return true;").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.wait_for(
        "the reloaded page",
        30,
        "return !!document.getElementById('step') && document.readyState === 'complete'",
    )
    .await;
    let resumed = d.step().await;
    assert!(resumed >= before, "reload resumed at {resumed}, before it was at {before}");
    assert!(!d.text("suggestion").await.trim().is_empty(), "the reloaded page shows the last suggestion at once");
    d.assert_scene_rendered(&["John_Lin", "Eddy_Lin"]).await;
    d.wait_for(
        "2 more steps after the reload",
        60,
        &format!("return Number(document.getElementById('step').textContent) >= {}", resumed + 2),
    )
    .await;
    assert!(live.current_step() >= resumed + 2);

    lap("reload continued");
    // Pause: the page tells the engine and stops posting.
    d.js("document.getElementById('pause_button').click(); return true;").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(live.paused());
    let paused_at = live.current_step();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(live.current_step() <= paused_at + 1, "paused run kept advancing");
    d.goto("about:blank").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let last_movement = live.current_step() - 1;

    // Replay of that run: plays the recorded movement files and writes nothing.
    let env_dir = storage.join(SIM).join("environment");
    let envs_before: Vec<_> = fs::read_dir(&env_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    let env1_before = fs::read(env_dir.join("1.json")).unwrap();
    d.goto(&format!("{base}/replay/{SIM}/{start}/")).await;
    d.assert_scene_rendered(&["John_Lin", "Eddy_Lin"]).await;
    d.wait_for(
        "replay to pass 3 steps",
        60,
        &format!("return Number(document.getElementById('step').textContent) >= {}", start + 3),
    )
    .await;
    assert!(!d.text("suggestion").await.trim().is_empty());
    lap("replay started");
    d.screenshot("replay.png").await;
    d.wait_for(
        "end of replay",
        90,
        "return document.getElementById('status').textContent.includes('End of the recorded run')",
    )
    .await;
    assert_eq!(d.step().await, last_movement + 1);
    let envs_after: Vec<_> = fs::read_dir(&env_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(envs_before.len(), envs_after.len(), "replay wrote environment files");
    assert_eq!(fs::read(env_dir.join("1.json")).unwrap(), env1_before);

    lap("replay ended");

    // The landing page lists the run, with its steps and links.
    let movement_dir = storage.join(SIM).join("movement");
    let steps_recorded = fs::read_dir(&movement_dir).unwrap().count();
    d.goto(&format!("{base}/")).await;
    let row = d
        .wait_for(
            "the sim list",
            20,
            &format!("const r = document.getElementById('sim__{SIM}'); return r ? r.textContent : false;"),
        )
        .await;
    let row = row.as_str().unwrap_or_default().to_string();
    assert!(row.contains(&format!("{steps_recorded} (0–{last_movement})")), "steps shown: {row}");
    assert!(row.contains(&format!("propersim compress {SIM}")), "not compressed yet: {row}");
    let replay_link =
        d.js(&format!("return document.querySelector('#sim__{SIM} a.replay').getAttribute('href')")).await;
    // From the assistant's first turn: the first record's step.
    let records = fs::read_to_string(storage.join(SIM).join("records.jsonl")).unwrap();
    let first_turn = serde_json::from_str::<Value>(records.lines().next().unwrap()).unwrap()["step"].as_u64().unwrap();
    assert!(first_turn > 0, "the user sleeps first");
    assert_eq!(replay_link, json!(format!("/replay/{SIM}/{first_turn}/")));
    d.screenshot("landing.png").await;

    // The replay's scrubber jumps to a step: paused, the page shows that step's clock and panels.
    let movement = |s: u64| -> Value {
        serde_json::from_str(&fs::read_to_string(movement_dir.join(format!("{s}.json"))).unwrap()).unwrap()
    };
    let norec = |s: u64| movement(s)["persona"]["Eddy Lin"]["suggestion"] == json!("No Recommendation");
    // A step whose step before ended in "No Recommendation", if the run has one.
    let target = (start + 2..=last_movement).find(|&s| norec(s - 1)).unwrap_or(start + 4);
    println!("scrubbing to step {target} (No Recommendation in the step before: {})", norec(target - 1));
    d.goto(&format!("{base}/replay/{SIM}/{start}/?paused=1")).await;
    d.wait_for(
        "the scrubber",
        20,
        "return !!document.getElementById('scrubber') && document.readyState === 'complete'",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(d.step().await, start, "paused by ?paused=1");
    d.js(&format!(
        "const s = document.getElementById('scrubber'); s.value = '{target}';
         s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change')); return true;"
    ))
    .await;
    d.wait_for(
        "the jump",
        20,
        &format!(
            "return location.pathname === '/replay/{SIM}/{target}/' && document.readyState === 'complete' && !!document.getElementById('scrubber')"
        ),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(d.step().await, target, "the page is at the chosen step, still paused");
    let clock = movement(target - 1)["meta"]["curr_time"].as_str().unwrap().to_string();
    assert_eq!(d.text("game-time-content").await, clock, "the clock of the step before");
    assert_eq!(d.js("return document.getElementById('scrubber').value").await, json!(target.to_string()));
    assert_eq!(d.text("target_address__Eddy_Lin").await, "with John Lin", "a place, not `<persona> John Lin`");
    let said = d.text("suggestion_state").await;
    if norec(target - 1) {
        assert!(said.contains("stayed quiet"), "No Recommendation is not a proposal: {said:?}");
    }
    // Faster: 8x, then play on.
    d.js("document.querySelector('#speeds button[data-speed=\"8\"]').click(); document.getElementById('play_button').click(); return true;")
        .await;
    d.wait_for(
        "the replay to play on from the chosen step",
        30,
        &format!("return Number(document.getElementById('step').textContent) >= {}", target + 2),
    )
    .await;
    let search = d.js("return location.search").await.as_str().unwrap_or_default().to_string();
    assert!(
        search.contains("speed=8") && !search.contains("paused"),
        "a reload keeps the speed, not the pause: {search}"
    );
    lap("landing list and replay scrubber");
    // Demo from compressed storage, fast, to its end-of-run message.
    compress(&storage, SIM, &compressed).unwrap();
    d.goto(&format!("{base}/demo/{SIM}/{start}/4/")).await;
    d.assert_scene_rendered(&["John_Lin", "Eddy_Lin"]).await;
    d.wait_for(
        "demo to pass 2 steps",
        60,
        &format!("return Number(document.getElementById('step').textContent) >= {}", start + 2),
    )
    .await;
    assert!(!d.text("current_action__John_Lin").await.trim().is_empty());
    lap("demo started");
    d.screenshot("demo.png").await;
    d.wait_for(
        "the demo's end message",
        120,
        "return document.getElementById('status').textContent.includes('End of the run')",
    )
    .await;
    assert_eq!(d.step().await, last_movement + 1);
    lap("demo ended");

    // The path tester draws the map and reports the camera position to temp_storage.
    d.goto(&format!("{base}/path_tester/")).await;
    d.wait_for(
        "the path tester's tile readout",
        30,
        "return document.getElementById('tile').textContent.startsWith('(')",
    )
    .await;
    let probe = root.path().join("temp_storage/path_tester_env.json");
    let t0 = Instant::now();
    while !probe.is_file() && t0.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let camera: Value =
        serde_json::from_str(&fs::read_to_string(&probe).expect("path_tester_env.json written")).unwrap();
    assert_eq!(camera["maze"], "the_ville");
    assert!(camera["x"].as_f64().is_some() && camera["y"].as_f64().is_some(), "{camera}");

    // State Details of the live page's persona links to the saved state.
    d.goto(&format!("{base}/replay_persona_state/{SIM}/0/John_Lin/")).await;
    let rows = d.js("return document.querySelectorAll('table.scratch tr').length").await;
    assert!(rows.as_u64().unwrap_or(0) > 5, "scratch rows from the seed: {rows}");
    assert_eq!(d.js("return document.querySelector('h1').textContent.trim()").await, json!("John Lin"));
    d.screenshot("persona_state.png").await;
    lap("path tester and persona state");

    // Without Phaser the page says why there is no map and what to do: our copy missing (the
    // server says so), or a URL that fails to load (the script's onerror).
    for (file, url, says) in [
        (root.path().join("no/phaser.min.js"), None, "is not installed"),
        (
            phaser_dir.join("phaser.min.js"),
            Some(format!("http://127.0.0.1:{}/phaser.js", free_port())),
            "did not load from",
        ),
    ] {
        let mut opts = ServeOptions::new(root.path(), shared.join("static_dirs/assets"));
        opts.static_dir = repo().join("static");
        opts.templates = repo().join("templates");
        opts.phaser_file = file;
        opts.phaser_url = url;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = router(AppState::new(opts));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        d.goto(&format!("{base}/path_tester/")).await;
        let v = d
            .wait_for(
                "the Phaser notice",
                20,
                "const e = document.getElementById('phaser-error'); return !!e && !e.hidden && e.offsetHeight > 0 && e.textContent;",
            )
            .await;
        let text = v.as_str().unwrap_or_default().to_string();
        assert!(text.contains(says) && text.contains("npm ci") && text.contains("--phaser-url"), "{text}");
    }
    d.screenshot("no_phaser.png").await;
    lap("the notice without Phaser");
}
