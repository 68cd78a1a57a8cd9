//! Copies of our templates and static files compiled into the binary, used when the configured
//! `templates/` or `static/` folder does not exist (an installed binary run from anywhere). A
//! folder on disk always wins, so the pages can be edited without rebuilding.

use axum::extract::Path as UrlPath;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

macro_rules! files {
    ($base:literal: $($name:literal),+ $(,)?) => {
        &[$(($name, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/", $base, "/", $name)))),+]
    };
}

pub const TEMPLATES: &[(&str, &str)] = files!("templates":
    "base.html", "landing.html", "start_backend.html", "error.html", "home.html", "demo.html",
    "path_tester.html", "persona_state.html", "_personas.html", "_sim_page.html", "_phaser.html", "_scripted_banner.html", "_table.html", "sweeps.html", "sweep.html",
    "experiments.html", "experiment.html", "metrics.html");

pub const STATIC: &[(&str, &str)] = files!("static":
    "js/ville_map.js", "js/game.js", "js/path_tester.js", "css/propersim.css", "img/propersim.svg");

pub fn template(name: &str) -> Option<&'static str> {
    TEMPLATES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("js") => "text/javascript",
        Some("css") => "text/css",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// `GET /static/<path>` from the embedded copies.
pub async fn static_file(UrlPath(path): UrlPath<String>) -> Response {
    match STATIC.iter().find(|(n, _)| *n == path) {
        Some((n, body)) => ([(header::CONTENT_TYPE, content_type(n))], *body).into_response(),
        None => (StatusCode::NOT_FOUND, "Not found").into_response(),
    }
}
