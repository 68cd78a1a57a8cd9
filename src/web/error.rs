//! One error type for all handlers: a status and a message a person can act on. Pages show it in
//! the error template; the JSON endpoints answer `{"error": "..."}`. Nothing here panics.
//!
//! Handlers return `Result<_, WebError>` (a JSON endpoint: the error answers as JSON) or
//! `Result<_, PageError>` (a page: `?` turns a `WebError` into one, and the router's
//! [`error_pages`] layer renders it with the error template).

use axum::extract::State;
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
        let body = state.render.render("error.html", &ctx).unwrap_or_else(|_| plain_page(self.status, &self.message));
        (self.status, Html(body)).into_response()
    }

    /// The error as `{"error": message}`.
    pub fn json(self) -> Response {
        (self.status, axum::Json(json!({"error": self.message}))).into_response()
    }
}

/// A JSON endpoint's error: `{"error": message}` with its status.
impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        self.json()
    }
}

/// A page's error. Its response is a plain page carrying the error, which [`error_pages`] (a
/// layer of the router) replaces with the error template rendered by the server's renderer.
#[derive(Debug)]
pub struct PageError(WebError);

impl From<WebError> for PageError {
    fn from(e: WebError) -> Self {
        PageError(e)
    }
}

/// What [`error_pages`] finds in a response to render.
#[derive(Clone)]
struct ErrorForPage(StatusCode, String);

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let WebError { status, message } = self.0;
        let mut res = (status, Html(plain_page(status, &message))).into_response();
        res.extensions_mut().insert(ErrorForPage(status, message));
        res
    }
}

/// The router's layer that renders the errors of pages ([`PageError`]) with the error template.
pub async fn error_pages(State(state): State<AppState>, mut res: Response) -> Response {
    match res.extensions_mut().remove::<ErrorForPage>() {
        Some(ErrorForPage(status, message)) => WebError::new(status, message).page(&state),
        None => res,
    }
}

impl From<anyhow::Error> for WebError {
    fn from(e: anyhow::Error) -> Self {
        WebError::internal(format!("{e:#}"))
    }
}

/// The error page without the template.
fn plain_page(status: StatusCode, message: &str) -> String {
    format!("<!doctype html><title>Error</title><h1>{}</h1><p>{}</p>", status.as_u16(), escape_html(message))
}

/// Minimal HTML escaping for the fallback page.
pub fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}
