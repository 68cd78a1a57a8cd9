//! HTTP tests of every route of the web server, on a real axum server on loopback, against
//! storage fixtures made in a temp dir (always run) and the original's seeds (skipped with
//! `PROPERSIM-SKIP:` when /work/shared is not found).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::test_double::CopyEnvToMovement;
use propersim::sim::live::LiveSim;
use propersim::storage::compress::compress;
use propersim::storage::sim::{check_sim_code, copy_tree, SimDir, MAX_SIM_CODE};
use propersim::web::{router, AppState, ServeOptions};
use serde_json::{json, Value};

const SIM: &str = "fixture_sim";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn write(p: &Path, text: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

/// A small sim: two personas, environment/0.json, movement/0..=2, saved memories with gaps.
fn make_fixture(root: &Path) {
    let s = root.join("storage").join(SIM);
    write(
        &s.join("reverie/meta.json"),
        r#"{"fork_sim_code": "seed", "start_date": "February 13, 2025", "curr_time": "February 13, 2025, 00:00:00", "sec_per_step": 150, "maze_name": "the_ville", "persona_names": ["John Lin", "Eddy Lin"], "step": 0}"#,
    );
    write(
        &s.join("environment/0.json"),
        r#"{"John Lin": {"maze": "the_ville", "x": 5, "y": 10}, "Eddy Lin": {"maze": "the_ville", "x": 8, "y": 10}}"#,
    );
    for (i, x) in [6, 7, 7].iter().enumerate() {
        let mv = json!({"persona": {
            "John Lin": {"movement": [x, 10], "pronunciatio": "☕", "description": format!("act {i} @ the Ville:house:kitchen"), "chat": null,
                         "user_action_for_suggestion": null, "suggestion": "", "eval_res_score": null, "eval_res_reason": null},
            "Eddy Lin": {"movement": [8, 10], "pronunciatio": null, "description": "waiting", "chat": [["Eddy Lin", "hi <b>there</b>"]],
                         "user_action_for_suggestion": "accepted", "suggestion": format!("suggestion {i}"), "eval_res_score": "4", "eval_res_reason": "ok"}},
            "meta": {"curr_time": format!("February 13, 2025, 00:0{}:00", i * 2), "is_john_walking": "yes", "number_of_action_tokens": 3}});
        write(&s.join(format!("movement/{i}.json")), &serde_json::to_string(&mv).unwrap());
    }
    for name in ["John Lin", "Eddy Lin"] {
        let b = s.join("personas").join(name).join("bootstrap_memory");
        write(&b.join("scratch.json"), &json!({"first_name": name.split(' ').next(), "age": 40, "curr_tile": null, "daily_req": ["sleep", "work"], "f_daily_schedule": [["sleeping", 360]], "innate": null}).to_string());
        write(
            &b.join("associative_memory/nodes.json"),
            r#"{"node_9": {"type": "event", "created": "2025-02-13 00:10:00", "description": "newest event"}, "node_2": {"type": "event", "created": "2025-02-13 00:00:00", "description": "older event"}, "node_5": {"type": "chat", "created": "2025-02-13 00:05:00", "description": "a chat", "filling": [["John Lin", "it's <late>"]]}, "node_6": {"type": "thought", "created": "2025-02-13 00:06:00", "description": "a thought", "depth": 1, "filling": ["node_2"]}}"#,
        );
    }
    // Map assets: only what the server itself reads (the sprite sheets); the browser test uses the real ones.
    write(&root.join("assets/characters/atlas.json"), r#"{"frames": []}"#);
    write(&root.join("assets/characters/John_Lin.png"), "png");
}

struct Server {
    base: String,
    client: reqwest::Client,
    root: tempfile::TempDir,
}

impl Server {
    async fn start(live: Option<Arc<dyn LiveSim>>) -> Server {
        let root = tempfile::tempdir().unwrap();
        make_fixture(root.path());
        let assets = root.path().join("assets");
        Self::with_our_pages(root, assets, live).await
    }

    /// A server on `root` with our templates and static files, and the map assets at `assets`.
    async fn with_our_pages(root: tempfile::TempDir, assets: PathBuf, live: Option<Arc<dyn LiveSim>>) -> Server {
        let mut opts = ServeOptions::new(root.path(), assets);
        opts.static_dir = repo().join("static");
        opts.templates = repo().join("templates");
        opts.live = live;
        Self::serve(opts, root).await
    }

    async fn serve(opts: ServeOptions, root: tempfile::TempDir) -> Server {
        let app = router(AppState::new(opts));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Server { base: format!("http://{addr}"), client, root }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self.client.get(format!("{}{path}", self.base)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// A POST as our pages send it (JSON; the endpoints that change state accept nothing else).
    async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

fn handshake(s: &Server, step: u64) {
    write(&s.path("temp_storage/curr_sim_code.json"), &format!("{{\"sim_code\": \"{SIM}\"}}"));
    write(&s.path("temp_storage/curr_step.json"), &format!("{{\"step\": {step}}}"));
}

#[tokio::test]
async fn landing_static_and_slashes() {
    let s = Server::start(None).await;
    let r = s.client.get(&s.base).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-frame-options"], "SAMEORIGIN");
    assert!(r.text().await.unwrap().contains("Your environment server is up and running!"));

    let r = s.client.get(format!("{}/static/js/game.js", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().contains("javascript"));
    let js = r.text().await.unwrap();
    assert!(js.contains("/update_environment/") && js.contains("/process_environment/"));
    // The map and its tilesets, shared by the simulator pages and the path tester.
    let r = s.client.get(format!("{}/static/js/ville_map.js", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let js = r.text().await.unwrap();
    assert!(
        js.contains("the_ville_jan7.json") && js.contains("CuteRPG_Forest_C.png") && js.contains("blocks/blocks_1.png")
    );
    let r = s.client.get(format!("{}/static/assets/characters/atlas.json", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(s.get("/static/../Cargo.toml").await.0, 404);
    assert_eq!(s.get("/static/%2e%2e/Cargo.toml").await.0, 404);
    assert_eq!(s.get("/static/nope.js").await.0, 404);

    let r = s.client.get(format!("{}/replay/{SIM}/1", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], format!("/replay/{SIM}/1/"));
    let r = s.client.get(format!("{}/path_tester", s.base)).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (301, "/path_tester/"));
    let r = s.client.post(format!("{}/update_environment", s.base)).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(s.get("/simulator_home/").await.0, 404);
    assert_eq!(s.get("/no/such/page").await.0, 404);
}

#[tokio::test]
async fn simulator_home_without_live_sim_reads_handshake_and_keeps_it() {
    let s = Server::start(None).await;
    let (st, body) = s.get("/simulator_home").await;
    assert_eq!(st, 200);
    assert!(body.contains("Please start the backend first."), "{body}");

    handshake(&s, 0);
    for _ in 0..2 {
        let (st, body) = s.get("/simulator_home").await;
        assert_eq!(st, 200, "{body}");
        // movement 0..=2 exist, so the page resumes at step 3 from the targets of movement/2.json.
        assert!(body.contains(r#"<span id="step">3</span>"#), "{body}");
        assert!(body.contains("<span>John Lin,7,10</span>"), "{body}");
        // The page shows the last computed step at once: its clock and its suggestion.
        assert!(body.contains(r#"id="game-time-content">February 13, 2025, 00:04:00<"#), "{body}");
        assert!(body.contains(r#""previous":{"#) && body.contains("suggestion 2"), "{body}");
        for id in ["current_action__John_Lin", "target_address__Eddy_Lin", "chat__John_Lin", "name__Eddy_Lin"] {
            assert!(body.contains(&format!("id=\"{id}\"")), "missing {id}");
        }
        assert!(body.contains(&format!("/replay_persona_state/{SIM}/3/John_Lin/")));
        assert!(s.path("temp_storage/curr_step.json").is_file(), "the handshake must not be consumed");
    }
    // A handshake naming a missing sim is a 404 page with a message, not a 500.
    write(&s.path("temp_storage/curr_sim_code.json"), r#"{"sim_code": "gone"}"#);
    let (st, body) = s.get("/simulator_home").await;
    assert_eq!(st, 404);
    assert!(body.contains("no simulation named"), "{body}");
    write(&s.path("temp_storage/curr_sim_code.json"), r#"{"sim_code": "../etc"}"#);
    assert_eq!(s.get("/simulator_home").await.0, 400);
}

#[tokio::test]
async fn replay_page_and_bad_urls() {
    let s = Server::start(None).await;
    let (st, body) = s.get(&format!("/replay/{SIM}/1/")).await;
    assert_eq!(st, 200);
    assert!(body.contains(r#""mode":"replay""#) || body.contains(r#""mode": "replay""#), "{body}");
    assert!(body.contains("id=\"play_button\""));
    assert!(body.contains("<span>Eddy Lin,8,10</span>"));
    assert!(body.contains(&format!("/replay_persona_state/{SIM}/1/Eddy_Lin/")));
    // Model text in the config is JSON-escaped, never raw HTML.
    assert!(!body.contains("<b>there</b>"));
    assert_eq!(s.get(&format!("/replay/{SIM}/x/")).await.0, 400);
    assert_eq!(s.get(&format!("/replay/{SIM}/1_0/")).await.0, 400);
    assert_eq!(s.get(&format!("/replay/{SIM}/-1/")).await.0, 400);
    let (st, body) = s.get("/replay/no_such_sim/0/").await;
    assert_eq!(st, 404);
    assert!(body.contains("no simulation named"));
    assert!(matches!(s.get("/replay/..%2F..%2Fetc/0/").await.0, 400 | 404));
    assert!(matches!(s.get("/replay/%2e%2e/0/").await.0, 400 | 404));
    assert_eq!(s.client.post(format!("{}/replay/{SIM}/1/", s.base)).send().await.unwrap().status(), 405);
}

#[tokio::test]
async fn update_environment_shapes_and_errors() {
    let s = Server::start(None).await;
    let r = s
        .client
        .post(format!("{}/update_environment/", s.base))
        .body(format!(r#"{{"step": 1, "sim_code": "{SIM}"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let text = r.text().await.unwrap();
    assert!(text.ends_with(r#""<step>": 1}"#), "the echo comes last, Python-style: {text}");
    assert!(text.contains(r#""pronunciatio": "\u2615""#), "non-ASCII escaped like Python: {text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["persona"]["John Lin"]["movement"], json!([7, 10]));
    assert_eq!(v["persona"]["Eddy Lin"]["suggestion"], "suggestion 1");

    let (st, body) = s.post("/update_environment/", format!(r#"{{"step": "2", "sim_code": "{SIM}"}}"#)).await;
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["<step>"],
        json!("2"),
        "string steps are echoed as strings"
    );
    let (st, body) = s.post("/update_environment/", format!(r#"{{"step": 7, "sim_code": "{SIM}"}}"#)).await;
    assert_eq!((st, body.as_str()), (200, r#"{"<step>": -1}"#));

    for (bad, want) in [
        ("not json".to_string(), 400),
        ("[1, 2]".to_string(), 400),
        (format!(r#"{{"sim_code": "{SIM}"}}"#), 400),
        (format!(r#"{{"step": "../../evil", "sim_code": "{SIM}"}}"#), 400),
        (format!(r#"{{"step": -1, "sim_code": "{SIM}"}}"#), 400),
        (format!(r#"{{"step": 1.5, "sim_code": "{SIM}"}}"#), 400),
        (r#"{"step": 1, "sim_code": "../storage"}"#.to_string(), 400),
        (r#"{"step": 1, "sim_code": 5}"#.to_string(), 400),
        (r#"{"step": 1, "sim_code": "missing_sim"}"#.to_string(), 404),
    ] {
        let (st, body) = s.post("/update_environment/", bad.clone()).await;
        assert_eq!(st, want, "{bad} -> {body}");
        assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string(), "{body}");
    }
    assert_eq!(s.get("/update_environment/").await.0, 405);
    let big = format!(r#"{{"step": 1, "sim_code": "{SIM}", "pad": "{}"}}"#, "x".repeat(2 * 1024 * 1024));
    assert_eq!(s.post("/update_environment/", big).await.0, 413);
    // A corrupt movement file is a 500 with a message, not a panic.
    write(&s.path(&format!("storage/{SIM}/movement/5.json")), "{\"persona\": ");
    let (st, body) = s.post("/update_environment/", format!(r#"{{"step": 5, "sim_code": "{SIM}"}}"#)).await;
    assert_eq!(st, 500);
    assert!(body.contains("not valid JSON"), "{body}");
}

#[tokio::test]
async fn process_environment_writes_python_format_without_live_sim() {
    let s = Server::start(None).await;
    // For the sim a backend announced, the step it waits on (movement/0..=2 exist).
    handshake(&s, 0);
    let env = r#"{"step": 3, "sim_code": "fixture_sim", "environment": {"John Lin": {"maze": "the_ville", "x": 7, "y": 10}, "Eddy Lin": {"maze": "the_ville", "x": 8, "y": 10}}}"#;
    let plain = |body: &'static str| {
        s.client.post(format!("{}/process_environment/", s.base)).header("content-type", "text/plain").body(body).send()
    };
    assert_eq!(plain(env).await.unwrap().status(), 415, "only JSON: a cross-site page cannot send it unasked");
    let r = s
        .client
        .post(format!("{}/process_environment/", s.base))
        .header("content-type", "application/json")
        .body(env)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert_eq!(r.text().await.unwrap(), "received");
    let written = fs::read_to_string(s.path(&format!("storage/{SIM}/environment/3.json"))).unwrap();
    assert_eq!(written, "{\n  \"John Lin\": {\n    \"maze\": \"the_ville\",\n    \"x\": 7,\n    \"y\": 10\n  },\n  \"Eddy Lin\": {\n    \"maze\": \"the_ville\",\n    \"x\": 8,\n    \"y\": 10\n  }\n}");

    for (bad, want) in [
        (r#"{"step": "../../../temp_storage/evil", "sim_code": "fixture_sim", "environment": {}}"#, 400),
        (r#"{"step": 1, "sim_code": "../fixture_sim", "environment": {}}"#, 400),
        (r#"{"step": 1, "sim_code": "fixture_sim", "environment": [1]}"#, 400),
        (r#"{"step": 1, "sim_code": "fixture_sim"}"#, 400),
        (r#"{"step": 1, "sim_code": "nope", "environment": {}}"#, 404),
        ("{", 400),
    ] {
        assert_eq!(s.post("/process_environment/", bad).await.0, want, "{bad}");
    }
    assert!(!s.path("temp_storage/evil.json").exists());
    assert_eq!(s.get("/process_environment/").await.0, 405);
    assert_eq!(s.post("/process_environment/", vec![b'{'; 1024 * 1024 + 10]).await.0, 413);
}

#[tokio::test]
async fn live_sim_drives_the_step_loop() {
    // A test double that writes movement/<s>.json for each posted environment/<s>.json.
    let root_probe = tempfile::tempdir().unwrap();
    drop(root_probe);
    let s = Server::start(None).await;
    let storage = s.path("storage");
    // Start a second server on the same fixture, with the double as its live sim from step 3.
    let double = CopyEnvToMovement::new(storage.clone(), SIM, 3, Duration::ZERO);
    let mut opts = ServeOptions::new(s.root.path(), s.path("assets"));
    opts.static_dir = repo().join("static");
    opts.templates = repo().join("templates");
    opts.live = Some(double.clone());
    let live = Server::serve(opts, tempfile::tempdir().unwrap()).await;

    // Not paused, and yet doing nothing until a tab posts the environment: said so.
    let (_, body) = live.get("/live_control/").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["paused"].clone(), v["state"].clone(), v["step"].clone()),
        (json!(false), json!("waiting_for_page"), json!(3))
    );
    assert!(v["message"].as_str().unwrap().contains("browser tab"), "{v}");
    // No handshake files needed; the page starts at the engine's step and must post env 3 first.
    let (st, body) = live.get("/simulator_home").await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(r#"<span id="step">3</span>"#));
    assert!(body.contains(r#""start_phase":"process""#), "{body}");
    // The browser loop for steps 3..=5: env(s) = targets of movement(s-1).
    let mut tiles: Value = json!({"John Lin": [7, 10], "Eddy Lin": [8, 10]});
    for step in 3..6 {
        let env = json!({"John Lin": {"maze": "the_ville", "x": tiles["John Lin"][0], "y": tiles["John Lin"][1]},
                         "Eddy Lin": {"maze": "the_ville", "x": tiles["Eddy Lin"][0], "y": tiles["Eddy Lin"][1]}});
        let (st, _) = live
            .post("/process_environment/", json!({"step": step, "sim_code": SIM, "environment": env}).to_string())
            .await;
        assert_eq!(st, 200);
        let (st, body) = live.post("/update_environment/", json!({"step": step, "sim_code": SIM}).to_string()).await;
        assert_eq!(st, 200);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["<step>"], json!(step), "{body}");
        assert!(v["persona"]["Eddy Lin"]["suggestion"].as_str().unwrap().contains("suggestion"));
        tiles =
            json!({"John Lin": v["persona"]["John Lin"]["movement"], "Eddy Lin": v["persona"]["Eddy Lin"]["movement"]});
        assert_eq!(double.current_step(), step + 1);
    }
    let env5: Value =
        serde_json::from_str(&fs::read_to_string(storage.join(format!("{SIM}/environment/5.json"))).unwrap()).unwrap();
    let mv4: Value =
        serde_json::from_str(&fs::read_to_string(storage.join(format!("{SIM}/movement/4.json"))).unwrap()).unwrap();
    assert_eq!(json!([env5["John Lin"]["x"], env5["John Lin"]["y"]]), mv4["persona"]["John Lin"]["movement"]);
    // Reloading resumes at the engine's step, now with the environment still to post.
    let (_, body) = live.get("/simulator_home").await;
    assert!(body.contains(r#"<span id="step">6</span>"#));
    // A stale tab posting an old step is refused and the file kept.
    let env3 = fs::read(storage.join(format!("{SIM}/environment/3.json"))).unwrap();
    let (st, body) = live
        .post(
            "/process_environment/",
            json!({"step": 3, "sim_code": SIM, "environment": {"John Lin": {"maze": "the_ville", "x": 1, "y": 1}}})
                .to_string(),
        )
        .await;
    assert_eq!(st, 409, "{body}");
    assert!(body.contains("next step (6)"), "{body}");
    assert_eq!(fs::read(storage.join(format!("{SIM}/environment/3.json"))).unwrap(), env3);
    // A tab loaded while step 5 was being computed posts it again: answered, nothing rewritten.
    let env5_bytes = fs::read(storage.join(format!("{SIM}/environment/5.json"))).unwrap();
    let (st, body) = live
        .post(
            "/process_environment/",
            json!({"step": 5, "sim_code": SIM, "environment": {"John Lin": {"maze": "the_ville", "x": 1, "y": 1}}})
                .to_string(),
        )
        .await;
    assert_eq!((st, body.as_str()), (200, "received"));
    assert_eq!(fs::read(storage.join(format!("{SIM}/environment/5.json"))).unwrap(), env5_bytes);
    // Replay tabs cannot write into a live server's storage for another sim.
    fs::create_dir_all(storage.join("other_sim/environment")).unwrap();
    let (st, body) =
        live.post("/process_environment/", r#"{"step": 0, "sim_code": "other_sim", "environment": {}}"#).await;
    assert_eq!(st, 409, "{body}");
    assert!(!storage.join("other_sim/environment/0.json").exists());
    // Pause and play.
    let (st, body) = live.post("/live_control/", r#"{"paused": true}"#).await;
    assert_eq!(st, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["paused"], json!(true));
    assert!(double.paused());
    assert_eq!(live.post("/live_control/", r#"{"paused": "yes"}"#).await.0, 400);
    let (_, body) = live.get("/live_control/").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v["step"].clone(), v["paused"].clone(), v["state"].clone()), (json!(6), json!(true), json!("paused")));
    // Without a live sim there is nothing to pause.
    assert_eq!(s.post("/live_control/", r#"{"paused": true}"#).await.0, 404);
}

#[tokio::test]
async fn embedded_pages_when_folders_are_missing() {
    let root = tempfile::tempdir().unwrap();
    make_fixture(root.path());
    // ServeOptions::new points templates/ and static/ into the temp root, where they do not exist.
    let opts = ServeOptions::new(root.path(), root.path().join("assets"));
    let s = Server::serve(opts, root).await;
    let (st, body) = s.get("/").await;
    assert_eq!(st, 200);
    assert!(body.contains("Your environment server is up and running!"));
    assert_eq!(s.get(&format!("/replay/{SIM}/0/")).await.0, 200);
    let r = s.client.get(format!("{}/static/js/game.js", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/javascript");
    assert_eq!(r.text().await.unwrap(), fs::read_to_string(repo().join("static/js/game.js")).unwrap());
    assert_eq!(s.get("/static/js/nope.js").await.0, 404);
    assert_eq!(s.get("/static/assets/characters/atlas.json").await.0, 200);
}

#[tokio::test]
async fn junk_input_gets_4xx_never_a_crash() {
    let s = Server::start(Some(CopyEnvToMovement::new(PathBuf::from("/nonexistent"), SIM, 0, Duration::ZERO))).await;
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let bodies: Vec<String> = vec![
        String::new(),
        "null".into(),
        "\u{0}".into(),
        "{\"step\": 1e400, \"sim_code\": \"x\"}".into(),
        deep,
        "{\"step\": 18446744073709551615, \"sim_code\": \"fixture_sim\", \"environment\": {}}".into(),
        "{\"step\": \"9999999999999999999\", \"sim_code\": \"fixture_sim\"}".into(),
        "{\"step\": 1, \"sim_code\": \"\\u00e9t\\u00e9\"}".into(),
        "{\"camera\": null, \"paused\": null}".into(),
        String::from_utf8_lossy(&[0xff, 0xfe, 0x00]).into_owned(),
    ];
    for path in ["/update_environment/", "/process_environment/", "/path_tester_update/", "/live_control/"] {
        for b in &bodies {
            let (st, body) = s.post(path, b.clone()).await;
            assert!((400..500).contains(&st) || st == 200, "{path} {b:.40} -> {st} {body}");
        }
    }
    for path in [
        "/replay/x/99999999999999999999/",
        "/demo/x/1/99999999999999999999/",
        "/replay_persona_state/%00/1/a/",
        "/replay/%C3%A9/1/",
        "/demo/fixture_sim/18446744073709551615/1/",
        "/replay_persona_state/fixture_sim/1/_/",
        "/replay_persona_state/fixture_sim/1/%20x/",
        "/metrics/%00/",
        "/metrics/..%2F..%2Fetc/",
        "/metrics/%C3%A9/",
        "/replay_persona_state/fixture_sim/99999999999999999999/John_Lin/",
    ] {
        let (st, body) = s.get(path).await;
        assert!((400..500).contains(&st), "{path} -> {st} {body}");
    }
    // Still serving.
    assert_eq!(s.get("/").await.0, 200);
}

#[tokio::test]
async fn path_tester_routes() {
    let s = Server::start(None).await;
    let (st, body) = s.get("/path_tester/").await;
    assert_eq!(st, 200);
    assert!(body.contains("/static/js/ville_map.js") && body.contains("/static/js/path_tester.js"));
    let (st, body) =
        s.post("/path_tester_update/", r#"{"camera": {"maze": "the_ville", "x": 240.5, "y": 352.0}}"#).await;
    assert_eq!((st, body.as_str()), (200, "received"));
    assert_eq!(
        fs::read_to_string(s.path("temp_storage/path_tester_env.json")).unwrap(),
        "{\n  \"maze\": \"the_ville\",\n  \"x\": 240.5,\n  \"y\": 352.0\n}"
    );
    assert_eq!(s.post("/path_tester_update/", r#"{"cam": {}}"#).await.0, 400);
    assert_eq!(s.get("/path_tester_update/").await.0, 405);
}

#[tokio::test]
async fn demo_from_compressed_storage() {
    let s = Server::start(None).await;
    let (st, body) = s.get(&format!("/demo/{SIM}/0/3/")).await;
    assert_eq!(st, 404, "not compressed yet");
    assert!(body.contains(&format!("run `propersim compress {SIM}` first")), "the 404 names the command: {body}");
    compress(&s.path("storage"), SIM, &s.path("compressed_storage")).unwrap();
    let (st, body) = s.get(&format!("/demo/{SIM}/1/3/")).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("let movement_speed = 4;"));
    assert!(body.contains("let step = 1;"));
    assert!(body.contains("let step_size = 150 * 1000;"));
    assert!(body.contains(r#"let start_datetime = "2025-02-13T00:02:30";"#), "{body}");
    assert!(body.contains("/static/js/ville_map.js") && body.contains("/static/js/game.js"));
    assert!(
        body.contains(r#""assistant_log":{"1":"#) && body.contains("suggestion 2"),
        "assistant fields kept for the demo: {body}"
    );
    assert!(!body.contains(r#""0":{"curr_time""#), "log starts at the demo's step");
    for id in ["current_action__John_Lin", "chat__Eddy_Lin"] {
        assert!(body.contains(&format!("id=\"{id}\"")));
    }
    assert!(s.get(&format!("/demo/{SIM}/0/9/")).await.1.contains("let movement_speed = 2;"));
    assert!(s.get(&format!("/demo/{SIM}/0/x/")).await.1.contains("let movement_speed = 2;"));
    assert_eq!(s.get(&format!("/demo/{SIM}/99/1/")).await.0, 404);
    assert_eq!(s.get(&format!("/demo/{SIM}/one/1/")).await.0, 400);
    assert_eq!(s.get("/demo/missing/0/1/").await.0, 404);
    let r = s.client.get(format!("{}/demo/{SIM}/0/1", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 301);
}

#[tokio::test]
async fn persona_state_page() {
    let s = Server::start(None).await;
    let (st, body) = s.get(&format!("/replay_persona_state/{SIM}/2/John_Lin/")).await;
    assert_eq!(st, 200, "{body}");
    let newest = body.find("newest event").unwrap();
    let older = body.find("older event").unwrap();
    assert!(newest < older, "events newest first");
    assert!(body.contains("[node_9]") && body.contains("[node_6]") && body.contains("[node_5]"));
    assert!(
        body.contains("it&#x27;s &lt;late&gt;") || body.contains("it&#39;s &lt;late&gt;"),
        "chat text escaped: {body}"
    );
    assert!(!body.contains("None") && body.contains("<th>curr_tile</th><td>none</td>"), "null shown as none: {body}");
    assert!(body.contains("<li>00:00–06:00 sleeping</li>"), "the schedule with its times: {body}");
    assert!(body.contains("<li>sleep</li><li>work</li>"), "lists as lists: {body}");
    // Falls back to compressed storage when the live folder is gone.
    compress(&s.path("storage"), SIM, &s.path("compressed_storage")).unwrap();
    fs::remove_dir_all(s.path(&format!("storage/{SIM}/personas"))).unwrap();
    assert_eq!(s.get(&format!("/replay_persona_state/{SIM}/2/Eddy_Lin/")).await.0, 200);
    let (st, body) = s.get(&format!("/replay_persona_state/{SIM}/2/Nobody_Here/")).await;
    assert_eq!(st, 404);
    assert!(body.contains("no saved state"));
    assert_eq!(s.get(&format!("/replay_persona_state/{SIM}/2/..%2F..%2Fx/")).await.0, 400);
    assert_eq!(s.get(&format!("/replay_persona_state/{SIM}/x/John_Lin/")).await.0, 400);
    assert_eq!(s.get("/replay_persona_state/.b/1/John_Lin/").await.0, 400);
}

#[tokio::test]
async fn original_seed_replays_and_shows_state() {
    let Some(shared) = common::frontend_server() else {
        println!("PROPERSIM-SKIP: /work/shared/frontend_server not found (set PROPERSIM_SHARED)");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let seed = "base_the_ville_persona_1";
    copy_tree(&shared.join("storage").join(seed), &root.path().join("storage").join(seed)).unwrap();
    let s = Server::with_our_pages(root, shared.join("static_dirs/assets"), None).await;
    let (st, body) = s.get(&format!("/replay/{seed}/0/")).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("<span>John Lin,5,10</span>") && body.contains("<span>Eddy Lin,8,10</span>"));
    assert!(body.contains(r#""sprite":"John_Lin""#), "real character sheet chosen: {body}");
    let (st, body) = s.get(&format!("/replay_persona_state/{seed}/0/John_Lin/")).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("John"));
    let (st, body) = s.post("/update_environment/", format!(r#"{{"step": 0, "sim_code": "{seed}"}}"#)).await;
    assert_eq!((st, body.as_str()), (200, r#"{"<step>": -1}"#));
    let r = s
        .client
        .get(format!("{}/static/assets/the_ville/visuals/map_assets/v1/interiors_pt1.png", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
}

/// The pages load Phaser from our own route, which serves `npm ci`'s copy under the web root;
/// without it the route says how to get one and the pages show that notice; `--phaser-url`
/// points them elsewhere.
#[tokio::test]
async fn phaser_is_served_from_our_own_route() {
    const LOCAL: &str = "/static/js/phaser.min.js";
    // With the file (a stand-in: the route serves whatever file is there).
    let root = tempfile::tempdir().unwrap();
    make_fixture(root.path());
    let fake = "/* Phaser v3.55.2 stand-in */ window.Phaser = {};";
    write(&root.path().join("node_modules/phaser/dist/phaser.min.js"), fake);
    let mut opts = ServeOptions::new(root.path(), root.path().join("assets"));
    opts.static_dir = repo().join("static");
    opts.templates = repo().join("templates");
    let s = Server::serve(opts, root).await;
    let r = s.client.get(format!("{}{LOCAL}", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/javascript");
    assert_eq!(r.text().await.unwrap(), fake);
    for page in ["/path_tester/".to_string(), format!("/replay/{SIM}/1/")] {
        let (st, body) = s.get(&page).await;
        assert_eq!(st, 200, "{page}");
        // Attribute values are HTML-escaped (`/` as `&#x2f;`), which the browser undoes.
        let body = body.replace("&#x2f;", "/");
        assert!(
            body.contains(&format!(r#"<script src="{LOCAL}" onerror="propersimPhaserFailed(this.src)">"#)),
            "{body}"
        );
        assert!(!body.contains("cdn.jsdelivr.net/npm/phaser@3.55.2/dist/phaser.min.js\" "), "{body}");
        // The notice is there for a failed load, hidden.
        assert!(body.contains(r#"id="phaser-error" class="phaser-error" role="alert" hidden>"#), "{body}");
    }
    // Removed while serving: a clear 404, and the pages say what to do (embedded templates too).
    fs::remove_file(s.path("node_modules/phaser/dist/phaser.min.js")).unwrap();
    let (st, body) = s.get(LOCAL).await;
    assert_eq!(st, 404);
    assert!(body.contains("npm ci") && body.contains("--phaser-url"), "{body}");
    let (_, body) = s.get("/path_tester/").await;
    assert!(body.contains(r#"role="alert">Phaser (the map renderer) is not installed"#), "{body}");
    assert!(body.contains("npm ci") && body.contains("--phaser-path"), "{body}");

    // Embedded templates (no folders on disk) and --phaser-url.
    let root = tempfile::tempdir().unwrap();
    make_fixture(root.path());
    let mut opts = ServeOptions::new(root.path(), root.path().join("assets"));
    opts.phaser_url = Some("http://cdn.example/phaser.js".into());
    let s = Server::serve(opts, root).await;
    let (st, body) = s.get(&format!("/replay/{SIM}/1/")).await;
    assert_eq!(st, 200);
    let body = body.replace("&#x2f;", "/");
    assert!(body.contains(r#"<script src="http://cdn.example/phaser.js" onerror="#), "{body}");
    assert!(body.contains(r#"role="alert" hidden>"#), "no notice when a URL is given: {body}");
}

/// A second sim, made after the fixture (so newer), with one step.
fn make_newer_sim(root: &Path, name: &str) {
    let s = root.join("storage").join(name);
    write(
        &s.join("reverie/meta.json"),
        r#"{"start_date": "February 14, 2025", "curr_time": "February 14, 2025, 00:00:00", "sec_per_step": 150, "persona_names": ["John Lin", "Eddy Lin"], "step": 0}"#,
    );
    write(&s.join("movement/0.json"), r#"{"persona": {}, "meta": {"curr_time": "February 14, 2025, 00:00:00"}}"#);
}

#[tokio::test]
async fn landing_lists_sims_with_their_links() {
    let s = Server::start(None).await;
    // Modification times must differ from the fixture's.
    tokio::time::sleep(Duration::from_millis(20)).await;
    make_newer_sim(s.root.path(), "newer_sim");
    // A seed: a sim folder without a step.
    write(&s.path("storage/base_seed/reverie/meta.json"), r#"{"step": 0, "persona_names": ["John Lin"]}"#);
    // Folders that are not sims are not listed.
    fs::create_dir_all(s.path("storage/not_a_sim/movement")).unwrap();
    let (st, body) = s.get("/").await;
    assert_eq!(st, 200);
    assert!(body.contains("Your environment server is up and running!"));
    let newer = body.find(r#"id="sim__newer_sim""#).expect("newer_sim listed");
    let fixture = body.find(&format!(r#"id="sim__{SIM}""#)).expect("fixture listed");
    assert!(newer < fixture, "newest first");
    assert!(!body.contains("sim__not_a_sim") && !body.contains("not_a_sim"), "{body}");
    assert!(!body.contains("sim__base_seed") && body.contains("base_seed"), "a seed is listed apart: {body}");
    let row = &body[fixture..fixture + body[fixture..].find("</tr>").unwrap()];
    assert!(row.contains("3 <span"), "three steps: {row}");
    assert!(row.contains("February 13, 2025, 00:04:00"), "the last step's time: {row}");
    assert!(row.contains(&format!(r#"href="/replay/{SIM}/0/""#)), "{row}");
    assert!(row.contains(&format!(r#"href="/metrics/{SIM}/""#)), "{row}");
    assert!(row.contains(&format!(r#"href="/replay_persona_state/{SIM}/3/John_Lin/""#)), "{row}");
    assert!(
        row.contains(&format!("run <code>propersim compress {SIM}</code> first")) && !row.contains("/demo/"),
        "{row}"
    );
    assert!(!body.contains(r#"href="/sweeps/""#) && !body.contains(r#"href="/experiments/""#), "none exist yet");
    // Once compressed, the demo is linked; a sweep and an experiment get their links. With
    // records, replay and demo start at the assistant's first turn.
    compress(&s.path("storage"), SIM, &s.path("compressed_storage")).unwrap();
    write(
        &s.path(&format!("storage/{SIM}/records.jsonl")),
        "{\"step\": 1, \"scores\": [4]}\n{\"step\": 2, \"scores\": [4]}\n",
    );
    write(&s.path("storage/my_sweep/sweep.json"), "{}");
    write(&s.path("storage/experiments/my_exp/experiment.json"), "{}");
    let (_, body) = s.get("/").await;
    let fixture = body.find(&format!(r#"id="sim__{SIM}""#)).unwrap();
    let row = &body[fixture..fixture + body[fixture..].find("</tr>").unwrap()];
    assert!(row.contains(&format!(r#"href="/demo/{SIM}/1/3/""#)) && !row.contains("propersim compress"), "{row}");
    assert!(row.contains(&format!(r#"href="/replay/{SIM}/1/">from the assistant's first turn (step 1)"#)), "{row}");
    assert!(body.contains(r#"href="/sweeps/""#) && body.contains(r#"href="/experiments/""#), "{body}");

    // An empty storage folder: the command that makes a sim.
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("storage")).unwrap();
    let mut opts = ServeOptions::new(root.path(), root.path().join("assets"));
    opts.templates = repo().join("templates");
    let empty = Server::serve(opts, root).await;
    let (st, body) = empty.get("/").await;
    assert_eq!(st, 200);
    assert!(body.contains(r#"id="no_sims""#) && body.contains("propersim run --novis --fork"), "{body}");
}

#[tokio::test]
async fn metrics_page_draws_the_report() {
    let s = Server::start(None).await;
    let (st, body) = s.get(&format!("/metrics/{SIM}/")).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("<svg") && body.contains("Daily mean score"), "the report's chart: {body}");
    // The table is the report's own cells (src/report), row for row.
    let days = propersim::report::report(&s.path("storage"), SIM).unwrap();
    assert_eq!(days.len(), 1);
    assert_eq!(days[0].mean_score, Some(4.0), "three steps scored 4");
    let (header, rows) = propersim::report::table::table_cells(&days);
    let table = &body[body.find(r#"id="metrics_table""#).expect("table")..];
    for h in &header {
        assert!(
            table.contains(&format!("<th>{}</th>", h.replace('&', "&amp;").replace('/', "&#x2f;"))),
            "{h}: {table}"
        );
    }
    let cells: String = rows[0].iter().map(|c| format!("<td>{c}</td>")).collect();
    assert!(table.contains(&cells), "{cells} in {table}");
    assert!(table.contains("<td>February 13</td><td>3</td><td>4.00</td>"), "{table}");
    // Errors: a clear page, never a 500.
    let (st, body) = s.get("/metrics/no_such_sim/").await;
    assert_eq!(st, 404);
    assert!(body.contains("no simulation named"), "{body}");
    assert_eq!(s.get("/metrics/.b/").await.0, 400);
    write(&s.path("storage/seed_only/reverie/meta.json"), "{}");
    let (st, body) = s.get("/metrics/seed_only/").await;
    assert_eq!(st, 404);
    assert!(body.contains("no movement files"), "{body}");
    let r = s.client.get(format!("{}/metrics/{SIM}", s.base)).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.headers()["location"].to_str().unwrap()),
        (301, format!("/metrics/{SIM}/").as_str())
    );
}

#[tokio::test]
async fn favicon_is_our_logo() {
    let s = Server::start(None).await;
    let r = s.client.get(format!("{}/favicon.ico", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 301);
    let to = r.headers()["location"].to_str().unwrap().to_string();
    let r = s.client.get(format!("{}{to}", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/svg+xml");
    assert!(r.text().await.unwrap().contains("<svg"));
    // Every page names it, so browsers need not guess.
    let (_, body) = s.get("/").await;
    assert!(
        body.replace("&#x2f;", "/").contains(&format!(r#"<link rel="icon" type="image/svg+xml" href="{to}">"#)),
        "{body}"
    );
}

#[tokio::test]
async fn live_control_says_when_a_step_is_computing() {
    let s = Server::start(None).await;
    let double = CopyEnvToMovement::new(s.path("storage"), SIM, 3, Duration::from_secs(2));
    let mut opts = ServeOptions::new(s.root.path(), s.path("assets"));
    opts.templates = repo().join("templates");
    opts.live = Some(double.clone());
    let live = Server::serve(opts, tempfile::tempdir().unwrap()).await;
    let state =
        || async { serde_json::from_str::<Value>(&live.get("/live_control/").await.1).unwrap()["state"].clone() };
    assert_eq!(state().await, json!("waiting_for_page"));
    let env =
        json!({"John Lin": {"maze": "the_ville", "x": 7, "y": 10}, "Eddy Lin": {"maze": "the_ville", "x": 8, "y": 10}});
    let (st, _) =
        live.post("/process_environment/", json!({"step": 3, "sim_code": SIM, "environment": env}).to_string()).await;
    assert_eq!(st, 200);
    assert_eq!(state().await, json!("computing"));
    let t0 = std::time::Instant::now();
    while double.current_step() == 3 && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state().await, json!("waiting_for_page"), "step 3 done; step 4 waits for the page");
}

#[tokio::test]
async fn persona_state_as_of_a_step() {
    let s = Server::start(None).await;
    // The saved state is that of step 3 (meta.step); nodes up to 00:10 were saved with it.
    let meta_path = s.path(&format!("storage/{SIM}/reverie/meta.json"));
    let mut meta: Value = serde_json::from_str(&fs::read_to_string(&meta_path).unwrap()).unwrap();
    meta["step"] = json!(3);
    write(&meta_path, &meta.to_string());
    let scratch = json!({"first_name": "John", "curr_time": "February 13, 2025, 00:06:00", "lifestyle": "I'm up early",
        "act_obj_event": [null, null, null], "act_event": ["John Lin", "is", "reading"], "curr_tile": [7, 10],
        "act_address": "the Ville:Lin family's house:kitchen"});
    write(&s.path(&format!("storage/{SIM}/personas/John Lin/bootstrap_memory/scratch.json")), &scratch.to_string());
    write(
        &s.path(&format!("storage/{SIM}/state/checkpoint-3.json")),
        &json!({"next_step": 3, "user": {"tile": [7, 10], "action": {"description": "brewing tea", "address": "the Ville:Lin family's house:kitchen", "start": "February 13, 2025, 00:02:00", "minutes": 10},
            "day": {"plan": ["wake up at 7:00 am", "tea at 8:00 am"]}, "actions_today": ["sleeping"]}}).to_string(),
    );

    // Step 1: older than the saved state; memories from 00:02 on are hidden, and the page says so.
    let (st, body) = s.get(&format!("/replay_persona_state/{SIM}/1/John_Lin/")).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("latest saved state (step 3, February 13, 2025, 00:06:00), not step 1"), "{body}");
    assert!(body.contains("older event") && !body.contains("newest event") && !body.contains("a thought"), "{body}");
    assert!(body.contains("3 memories created at or after step 1 are not shown"), "{body}");
    // What the persona did in step 0, from its movement file, with a readable place.
    let doing = &body[body.find(r#"id="doing""#).expect("the step before")..];
    assert!(doing.contains("<td>act 0</td>") && doing.contains("Lin family&#x27;s house › kitchen"), "{doing}");
    assert!(!body.contains(r#"id="checkpoint""#), "no checkpoint of step 1");
    // Values read as text: no Python reprs.
    assert!(body.contains("<td>I&#x27;m up early</td>") && !body.contains(r"I\'m"), "{body}");
    assert!(body.contains("<th>act_obj_event</th><td>none</td>") && !body.contains("[None"), "{body}");
    assert!(body.contains("<th>act_event</th><td>John Lin is reading</td>"), "{body}");
    assert!(body.contains("<th>curr_tile</th><td>7, 10</td>"), "{body}");

    // A step past the end: still the saved state, said to be not that step; no crash on the sums.
    let huge = 9_999_999_999_999_999_999u64;
    let (st, body) = s.get(&format!("/replay_persona_state/{SIM}/{huge}/John_Lin/")).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(&format!("not step {huge}")) && body.contains("newest event"), "{body}");
    // Step 3: the saved state itself, everything shown, and the engine's checkpoint of the user.
    let (_, body) = s.get(&format!("/replay_persona_state/{SIM}/3/John_Lin/")).await;
    assert!(!body.contains("latest saved state") && !body.contains("later_nodes"), "{body}");
    assert!(body.contains("newest event") && body.contains("a thought"), "{body}");
    let cp = &body[body.find(r#"id="checkpoint""#).expect("checkpoint section")..];
    assert!(cp.contains("<td>brewing tea</td>") && cp.contains("<li>tea at 8:00 am</li>"), "{cp}");
    // The assistant's entry: where it is reads as a place; the user's checkpoint is not its own.
    let (_, body) = s.get(&format!("/replay_persona_state/{SIM}/3/Eddy_Lin/")).await;
    assert!(!body.contains(r#"id="checkpoint""#), "{body}");
    assert!(body.contains("<td>suggestion 2</td>"), "the assistant's suggestion in the step before: {body}");
}

/// A sim the scripted brain ran shows so on every page of it (live/replay, persona state, demo),
/// naming the roles its run.json gives the scripted provider; a sim with no run.json shows
/// nothing of the kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_sims_say_so_on_their_pages() {
    use propersim::config::ProviderKind;
    use propersim::sim::setup::{open_engine, Open};
    use propersim::storage::run::RunInfo;
    let Some(shared) = common::frontend_server() else {
        println!("PROPERSIM-SKIP: /work/shared/frontend_server not found (set PROPERSIM_SHARED)");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let mut cfg = common::base_config(&shared, root.path(), "scripted_sim");
    cfg.set_all_providers(ProviderKind::Scripted);
    let mut engine = open_engine(&cfg, Open::Fork, propersim::llm::cache::CacheMode::Off).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    propersim::sim::headless::run(&mut engine, 3, false, stop).await.unwrap();
    drop(engine);
    let seed = "base_the_ville_persona_1";
    copy_tree(&shared.join("storage").join(seed), &root.path().join("storage").join(seed)).unwrap();
    let sim_dir = root.path().join("storage/scripted_sim");
    compress(&root.path().join("storage"), "scripted_sim", &root.path().join("compressed_storage")).unwrap();
    let mut opts = ServeOptions::new(root.path(), shared.join("static_dirs/assets"));
    opts.static_dir = repo().join("static");
    opts.templates = repo().join("templates");
    let s = Server::serve(opts, root).await;

    let all = "This run used the scripted brain (rules, not a model) for: user, evaluator, assistant, summarizer.";
    for page in [
        "/replay/scripted_sim/1/",
        "/replay_persona_state/scripted_sim/1/John_Lin/",
        "/demo/scripted_sim/1/2/",
        "/metrics/scripted_sim/",
    ] {
        let (st, body) = s.get(page).await;
        assert_eq!(st, 200, "{page}: {body}");
        assert!(body.contains(all), "{page} lacks the notice: {body}");
    }
    // A run whose assistant was a model names only the other roles.
    let mut info = RunInfo::read(&sim_dir).unwrap().expect("the fork wrote run.json");
    info.roles["assistant"].provider = "local".into();
    info.write(&sim_dir).unwrap();
    let (_, body) = s.get("/replay/scripted_sim/1/").await;
    assert!(body.contains("for: user, evaluator, summarizer."), "{body}");
    // The original's seed has no run.json: no notice.
    let (st, body) = s.get(&format!("/replay/{seed}/0/")).await;
    assert_eq!(st, 200, "{body}");
    assert!(!body.contains("scripted brain"), "{body}");
}

/// A name as a URL path segment: everything but letters, digits, `.`, `_` and `-` percent-encoded.
fn url_segment(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Everything the web shows of sim `sim` (a copy of the fixture) answers: the replay page, its
/// JSON endpoints, the metrics and persona pages, the demo once compressed, the landing page's
/// list; and the report reads it.
async fn opens_in_every_page_and_the_report(s: &Server, sim: &str) {
    let storage = s.path("storage");
    let (st, body) = s.get(&format!("/replay/{sim}/1/")).await;
    assert_eq!(st, 200, "{sim}: {body}");
    assert!(body.contains(&format!(r#"<div id="sim_code">{sim}</div>"#)), "{sim}: {body}");
    let (st, body) = s.post("/update_environment/", json!({"step": 1, "sim_code": sim}).to_string()).await;
    assert_eq!(st, 200, "{sim}: {body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["persona"]["Eddy Lin"]["suggestion"], "suggestion 1");
    // The step a backend running it waits on (movement 0..=2 exist).
    write(&s.path("temp_storage/curr_sim_code.json"), &json!({"sim_code": sim}).to_string());
    let env = json!({"step": 3, "sim_code": sim, "environment": {"John Lin": {"maze": "the_ville", "x": 7, "y": 10},
                     "Eddy Lin": {"maze": "the_ville", "x": 8, "y": 10}}});
    assert_eq!(s.post("/process_environment/", env.to_string()).await, (200, "received".to_string()), "{sim}");
    assert!(storage.join(sim).join("environment/3.json").is_file());
    for page in [format!("/metrics/{sim}/"), format!("/replay_persona_state/{sim}/2/John_Lin/")] {
        let (st, body) = s.get(&page).await;
        assert_eq!(st, 200, "{page}: {body}");
    }
    compress(&storage, sim, &s.path("compressed_storage")).unwrap();
    let (st, body) = s.get(&format!("/demo/{sim}/1/3/")).await;
    assert_eq!(st, 200, "{sim}: {body}");
    assert!(s.get("/").await.1.contains(&format!(r#"id="sim__{sim}""#)), "{sim} listed on the landing page");
    let days = propersim::report::report(&storage, sim).unwrap();
    assert_eq!((days.len(), days[0].mean_score), (1, Some(4.0)), "{sim}");
}

/// Sim codes have one rule (`storage::sim::check_sim_code`): what the CLI makes, with `.` inside
/// or 128 characters long, forked as `run --fork --sim` forks, opens in the web pages and the
/// report.
#[tokio::test]
async fn sim_codes_the_cli_makes_open_in_the_pages_and_the_report() {
    let s = Server::start(None).await;
    for sim in ["a.b_c-1".to_string(), "my.sweep_p32".into(), "x".repeat(MAX_SIM_CODE)] {
        SimDir::fork(&s.path("storage"), &[], SIM, &sim, false).unwrap();
        opens_in_every_page_and_the_report(&s, &sim).await;
    }
}

/// A name one part refuses, all refuse with the same message: the web (400, JSON or page), the
/// report, forking (`run --sim`) and compression. Folders with two of the names exist, so the
/// refusals are the rule's, not a missing sim's.
#[tokio::test]
async fn sim_codes_refused_by_one_are_refused_by_all() {
    let s = Server::start(None).await;
    let storage = s.path("storage");
    let long = "x".repeat(MAX_SIM_CODE + 1);
    for name in [".x", long.as_str()] {
        copy_tree(&storage.join(SIM), &storage.join(name)).unwrap();
    }
    let before = fs::read_dir(&storage).unwrap().count();
    for bad in ["", ".", "..", ".x", "a/b", "../fixture_sim", "a b", "\u{e9}t\u{e9}", "a\\b", long.as_str()] {
        let want = check_sim_code(bad).unwrap_err();
        assert!(want.starts_with("invalid simulation name"), "{want}");
        let (st, body) = s.post("/update_environment/", json!({"step": 0, "sim_code": bad}).to_string()).await;
        assert_eq!((st, serde_json::from_str::<Value>(&body).unwrap()["error"].clone()), (400, json!(want)), "{bad:?}");
        // Pages, where the name is one URL path segment ("", "." and ".." are not).
        if !["", ".", ".."].contains(&bad) {
            let seg = url_segment(bad);
            for page in [
                format!("/replay/{seg}/0/"),
                format!("/demo/{seg}/0/1/"),
                format!("/metrics/{seg}/"),
                format!("/replay_persona_state/{seg}/0/John_Lin/"),
            ] {
                let (st, body) = s.get(&page).await;
                assert_eq!(st, 400, "{page}: {body}");
                assert!(body.contains(r#"<p id="error_message">invalid simulation name"#), "{page}: {body}");
            }
        }
        let err = |e: anyhow::Error| format!("{e:#}");
        assert_eq!(err(propersim::report::report(&storage, bad).unwrap_err()), want, "report {bad:?}");
        assert_eq!(err(SimDir::fork(&storage, &[], SIM, bad, false).unwrap_err()), want, "fork {bad:?}");
        assert_eq!(err(compress(&storage, bad, &s.path("compressed_storage")).unwrap_err()), want, "compress {bad:?}");
    }
    assert_eq!(fs::read_dir(&storage).unwrap().count(), before, "nothing was made");
    assert!(!s.path("compressed_storage").exists());
}

/// The real binary: `run --sim a.b_c-1` on the original's seed, then `report` and `compress`, and
/// the pages open it; `run`, `report` and `compress` refuse `.x` with the rule's message.
#[tokio::test]
async fn a_run_named_with_a_dot_opens_in_the_pages_and_the_report() {
    let shared = need!(common::frontend_server(), "../shared/frontend_server (set PROPERSIM_SHARED)");
    let root = tempfile::tempdir().unwrap();
    let storage = root.path().join("storage");
    let cli = |args: &[&str]| {
        let mut c = std::process::Command::new(common::bin());
        c.current_dir(root.path()).args(args);
        common::folder_args(&mut c, &shared, root.path(), "temp_storage");
        c.output().unwrap()
    };
    let run = |sim: &str| {
        cli(&["run", "--novis", "--provider", "scripted", "--set", "train_method=none", "--steps", "3"]
            .into_iter()
            .chain(["--fork", "base_the_ville_persona_1", "--sim", sim])
            .collect::<Vec<_>>())
    };
    let sim = "a.b_c-1";
    for o in [run(sim), cli(&["report", sim]), cli(&["compress", sim])] {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let want = check_sim_code(".x").unwrap_err();
    for o in [run(".x"), cli(&["report", ".x"]), cli(&["compress", ".x"])] {
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.code() == Some(1) && e.contains(&want), "{e}");
    }
    assert!(!storage.join(".x").exists());

    let s = Server::with_our_pages(root, shared.join("static_dirs/assets"), None).await;
    let (st, body) = s.get(&format!("/replay/{sim}/0/")).await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = s.post("/update_environment/", json!({"step": 2, "sim_code": sim}).to_string()).await;
    assert_eq!(st, 200, "{body}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["persona"]["John Lin"]["movement"].is_array(), "{body}");
    for page in
        [format!("/demo/{sim}/0/3/"), format!("/metrics/{sim}/"), format!("/replay_persona_state/{sim}/3/John_Lin/")]
    {
        let (st, body) = s.get(&page).await;
        assert_eq!(st, 200, "{page}: {body}");
    }
}
