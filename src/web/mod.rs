//! The web server: the original Django frontend's URL shapes and payloads, with our own pages.
//!
//! Routes (see protocol.md §1): `/`, `/simulator_home`, `/replay/<sim>/<step>/`,
//! `/demo/<sim>/<step>/<speed>/`, `/replay_persona_state/<sim>/<step>/<persona>/`,
//! `/process_environment/`, `/update_environment/`, `/path_tester/`, `/path_tester_update/`,
//! `/static/...`, plus our `/live_control/` (pause/play of an in-process run), `/metrics/<sim>/`
//! (a sim's per-day report), `/sweeps/`, `/sweeps/<name>/` (the aggregate report of a sweep),
//! `/experiments/`, `/experiments/<name>/`, and `/favicon.ico`.

pub mod api;
pub mod demo;
pub mod embedded;
pub mod error;
pub mod experiments;
pub mod guard;
pub mod pages;
pub mod persona_state;
pub mod render;
pub mod server;
pub mod sim_files;
pub mod sims;
pub mod slash;
pub mod sweeps;
pub mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue};
use axum::middleware::{from_fn, from_fn_with_state, map_response_with_state};
use axum::routing::{get, post};
use axum::Router;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::sim::live::LiveSim;
pub use server::Limits;

/// Largest request body accepted (an environment of 25 personas is ~3 KiB); bigger → 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Where the pages load Phaser from by default: our own route, serving
/// [`ServeOptions::phaser_file`], so the map draws offline.
pub const LOCAL_PHASER_URL: &str = "/static/js/phaser.min.js";

/// The public CDN copy of the Phaser the pages are written for (the original loads 3.55.2 from
/// jsdelivr), for `--phaser-url` when no local copy is at hand.
pub const CDN_PHASER_URL: &str = "https://cdn.jsdelivr.net/npm/phaser@3.55.2/dist/phaser.min.js";

/// Where `npm ci` (package.json's dev dependency) puts Phaser, relative to the web root.
pub const NPM_PHASER_PATH: &str = "node_modules/phaser/dist/phaser.min.js";

/// Everything `serve` needs.
#[derive(Clone)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    /// The original's `storage/` (one folder per sim).
    pub storage: PathBuf,
    /// Map assets (the original's `static_dirs/assets`), served under `/static/assets/`.
    pub assets: PathBuf,
    /// Our `static/` (JS/CSS), served under `/static/`.
    pub static_dir: PathBuf,
    /// Our `templates/`.
    pub templates: PathBuf,
    /// The handshake folder (`curr_sim_code.json`, `curr_step.json`, `path_tester_env.json`).
    pub temp_storage: PathBuf,
    /// Compressed runs for the demo (default: `compressed_storage` beside `storage`).
    pub compressed: PathBuf,
    /// Load Phaser from this URL instead of our own route (e.g. [`CDN_PHASER_URL`]).
    pub phaser_url: Option<String>,
    /// The Phaser file served at [`LOCAL_PHASER_URL`] (default: `npm ci`'s copy under the web
    /// root, [`NPM_PHASER_PATH`]). Read on each request; when it is missing the route answers
    /// 404 and the pages say how to get it.
    pub phaser_file: PathBuf,
    /// The in-process run shown by `simulator_home`, if any.
    pub live: Option<Arc<dyn LiveSim>>,
    /// Timeouts and the connection cap.
    pub limits: Limits,
}

impl ServeOptions {
    /// Defaults relative to a working folder: `storage/`, `temp_storage/`, `compressed_storage/`,
    /// `static/`, `templates/`, and the map assets at `assets`.
    pub fn new(root: &std::path::Path, assets: PathBuf) -> Self {
        ServeOptions {
            host: "127.0.0.1".into(),
            port: 8000,
            storage: root.join("storage"),
            assets,
            static_dir: root.join("static"),
            templates: root.join("templates"),
            temp_storage: root.join("temp_storage"),
            compressed: root.join("compressed_storage"),
            phaser_url: None,
            phaser_file: root.join(NPM_PHASER_PATH),
            live: None,
            limits: Limits::default(),
        }
    }

    /// The limits of `[web]` in the configuration.
    pub fn set_limits(&mut self, w: &crate::config::WebSettings) -> anyhow::Result<()> {
        let secs = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(std::time::Duration::from_secs_f64(v))
            } else {
                Err(anyhow::anyhow!("config key `web.{key}`: {v} is not allowed; use a positive number of seconds"))
            }
        };
        self.limits.header_timeout = secs("header_timeout_s", w.header_timeout_s)?;
        self.limits.idle_timeout = secs("idle_timeout_s", w.idle_timeout_s)?;
        if let Some(n) = w.max_connections {
            if n == 0 {
                anyhow::bail!("config key `web.max_connections`: 0 is not allowed; use 1 or more");
            }
            self.limits.max_connections = n;
        }
        Ok(())
    }

    /// The Phaser URL the pages load.
    pub fn phaser_src(&self) -> &str {
        self.phaser_url.as_deref().unwrap_or(LOCAL_PHASER_URL)
    }

    /// When the pages load Phaser from our route and the file is not there: what to do about it.
    pub fn phaser_problem(&self) -> Option<String> {
        if self.phaser_url.is_some() || self.phaser_file.is_file() {
            return None;
        }
        Some(format!(
            "Phaser (the map renderer) is not installed: {} does not exist. Run `npm ci` in the web root, \
             pass --phaser-path FILE (a phaser.min.js 3.55), or load it from a CDN with --phaser-url {CDN_PHASER_URL}",
            self.phaser_file.display()
        ))
    }

    /// Whether the server listens on loopback only (then requests must name a loopback host).
    pub fn loopback(&self) -> bool {
        guard::is_loopback_authority(&self.host)
    }
}

/// Shared state of all handlers.
#[derive(Clone)]
pub struct AppState {
    pub opts: Arc<ServeOptions>,
    pub render: Arc<render::Renderer>,
    pub live: Option<Arc<dyn LiveSim>>,
    /// The map's size in tiles (`maze_meta_info.json`), to refuse off-map tiles; `None` when
    /// the assets are missing.
    pub map_size: Option<(i64, i64)>,
}

impl AppState {
    pub fn new(opts: ServeOptions) -> Self {
        let render = Arc::new(render::Renderer::new(&opts.templates));
        let live = opts.live.clone();
        let map_size = std::fs::read(opts.assets.join("the_ville/matrix/maze_meta_info.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|m| Some((m.get("maze_width")?.as_i64()?, m.get("maze_height")?.as_i64()?)));
        AppState { opts: Arc::new(opts), render, live, map_size }
    }
}

/// All routes, static files, the body limit and the original's response headers.
pub fn router(state: AppState) -> Router {
    let assets = ServeDir::new(&state.opts.assets);
    let ours: Router<AppState> = if state.opts.static_dir.is_dir() {
        Router::new().fallback_service(ServeDir::new(&state.opts.static_dir))
    } else {
        Router::new().route("/{*path}", get(embedded::static_file))
    };
    let same_origin = from_fn_with_state(state.clone(), guard::same_origin);
    let static_files: Router<AppState> =
        Router::new().nest_service("/static/assets", assets).nest("/static", ours).layer(from_fn(guard::static_names));
    Router::new()
        .route(LOCAL_PHASER_URL, get(pages::phaser))
        .route("/", get(sims::landing))
        .route("/favicon.ico", get(pages::favicon))
        .route("/metrics/{sim}/", get(sims::metrics))
        .route("/simulator_home", get(pages::simulator_home))
        .route("/replay/{sim}/{step}/", get(pages::replay))
        .route("/demo/{sim}/{step}/{speed}/", get(demo::demo))
        .route("/replay_persona_state/{sim}/{step}/{persona}/", get(persona_state::persona_state))
        .route("/process_environment/", post(api::process_environment).route_layer(same_origin.clone()))
        .route("/update_environment/", post(api::update_environment))
        .route("/path_tester/", get(pages::path_tester))
        .route("/path_tester_update/", post(api::path_tester_update).route_layer(same_origin.clone()))
        .route("/live_control/", get(api::live_state).merge(post(api::live_control).route_layer(same_origin)))
        .route("/sweeps/", get(sweeps::list))
        .route("/sweeps/{name}/", get(sweeps::show))
        .route("/experiments/", get(experiments::list))
        .route("/experiments/{name}/", get(experiments::show))
        .merge(static_files)
        .fallback(slash::fallback)
        .layer(map_response_with_state(state.clone(), error::error_pages))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(SetResponseHeaderLayer::if_not_present(header::X_FRAME_OPTIONS, HeaderValue::from_static("SAMEORIGIN")))
        .with_state(state)
}

/// Bind `host:port` and serve until the process ends (or the future is dropped).
pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    if !opts.storage.is_dir() {
        anyhow::bail!("storage folder {} does not exist", opts.storage.display());
    }
    if let Some(problem) = opts.phaser_problem() {
        tracing::warn!("{problem}; the pages will show no map");
    }
    if !opts.assets.join("the_ville/visuals/the_ville_jan7.json").is_file() {
        tracing::warn!(
            "map assets not found under {} (expected the_ville/visuals/the_ville_jan7.json); pages will show no map",
            opts.assets.display()
        );
    }
    let addr: SocketAddr = tokio::net::lookup_host((opts.host.as_str(), opts.port))
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("cannot resolve host {}", opts.host))?;
    let limits = opts.limits;
    let app = router(AppState::new(opts));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("web server on http://{}", listener.local_addr()?);
    server::serve_on(listener, app, limits).await
}
