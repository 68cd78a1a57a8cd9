//! One error type for all handlers: a status and a message a person can act on. Pages show it in
//! the error template; the JSON endpoints answer `{"error": "..."}`. Nothing here panics.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use super::AppState;

#[derive(Debug)]
pub struct WebError {
    pub status: StatusCode,
    pub message: String,
}

impl WebError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        WebError { status, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// The error as an HTML page rendered from `templates/error.html` (a plain page if that fails).
    pub fn page(self, state: &AppState) -> Response {
        let ctx = json!({"status": self.status.as_u16(), "reason": self.status.canonical_reason().unwrap_or(""), "message": self.message});
        let body = state.render.render("error.html", &ctx).unwrap_or_else(|_| {
            format!(
                "<!doctype html><title>Error</title><h1>{}</h1><p>{}</p>",
                self.status.as_u16(),
                escape_html(&self.message)
            )
        });
        (self.status, Html(body)).into_response()
    }

    /// The error as `{"error": message}`.
    pub fn json(self) -> Response {
        (self.status, axum::Json(json!({"error": self.message}))).into_response()
    }
}

impl From<anyhow::Error> for WebError {
    fn from(e: anyhow::Error) -> Self {
        WebError::internal(format!("{e:#}"))
    }
}

/// Minimal HTML escaping for the fallback page.
pub fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}
