//! Unmatched paths: Django's APPEND_SLASH for our routes (GET/HEAD without the trailing slash →
//! 301 to the slashed URL; other methods → 308 so the body is resent), else 404.

use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// Path shapes (segments; `*` = one non-empty segment) that exist with a trailing slash.
const SLASHED: &[&[&str]] = &[
    &["replay", "*", "*"],
    &["demo", "*", "*", "*"],
    &["replay_persona_state", "*", "*", "*"],
    &["process_environment"],
    &["update_environment"],
    &["path_tester"],
    &["path_tester_update"],
    &["live_control"],
    &["metrics", "*"],
];

fn wants_slash(path: &str) -> bool {
    if path.ends_with('/') {
        return false;
    }
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    SLASHED.iter().any(|shape| {
        shape.len() == segs.len() && shape.iter().zip(&segs).all(|(p, s)| !s.is_empty() && (*p == "*" || p == s))
    })
}

pub async fn fallback(method: Method, uri: Uri) -> Response {
    if wants_slash(uri.path()) {
        let target = match uri.query() {
            Some(q) => format!("{}/?{q}", uri.path()),
            None => format!("{}/", uri.path()),
        };
        let status = if method == Method::GET || method == Method::HEAD {
            StatusCode::MOVED_PERMANENTLY
        } else {
            StatusCode::PERMANENT_REDIRECT
        };
        return (status, [(header::LOCATION, target)]).into_response();
    }
    (StatusCode::NOT_FOUND, format!("Not found: {}", uri.path())).into_response()
}

#[cfg(test)]
mod tests {
    use super::wants_slash;

    #[test]
    fn shapes() {
        assert!(wants_slash("/replay/x/1"));
        assert!(wants_slash("/update_environment"));
        assert!(wants_slash("/metrics/x"));
        assert!(!wants_slash("/simulator_home"));
        assert!(!wants_slash("/replay/x"));
        assert!(!wants_slash("/replay//1"));
    }
}
