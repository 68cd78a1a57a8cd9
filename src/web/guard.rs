//! Request checks that run before the handlers.
//!
//! * [`same_origin`]: the endpoints that change state (`/process_environment/`,
//!   `/path_tester_update/`, `POST /live_control/`) answer only this server's own pages. Any web
//!   page the user has open could otherwise pause the sim or write environment files: a browser
//!   sends a cross-site `text/plain` POST without asking first. So a request must say
//!   `Content-Type: application/json` (which a cross-site page can send only after a CORS
//!   preflight, which this server never grants), and its `Origin`, when present, must be this
//!   server; a request naming no origin (curl, scripts) is accepted. When the server listens on
//!   loopback, the `Host` must be a loopback name too, so a DNS-rebinding page (its own name
//!   pointed at 127.0.0.1) does not count as same-origin.
//! * [`static_names`]: a static file name no filesystem can hold (a path segment over 255
//!   bytes) is a 404, not the filesystem's error as a 500.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::WebError;
use super::AppState;

/// Longest file name component Linux filesystems accept.
const MAX_NAME_BYTES: usize = 255;

pub async fn same_origin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match check_same_origin(req.headers(), state.opts.loopback()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.json(),
    }
}

fn check_same_origin(headers: &HeaderMap, loopback_only: bool) -> Result<(), WebError> {
    let forbidden = |m: String| WebError::new(StatusCode::FORBIDDEN, m);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if loopback_only && !is_loopback_authority(host) {
        return Err(forbidden(format!(
            "refused: Host {host:?} is not this server (it listens on loopback; use http://127.0.0.1 or http://localhost)"
        )));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
        if authority.is_none_or(|a| !a.eq_ignore_ascii_case(host)) {
            return Err(forbidden(format!(
                "refused a cross-origin request from {origin:?}: only this server's own pages may change the simulation"
            )));
        }
    } else if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" && site != "none" {
            return Err(forbidden(format!(
                "refused a {site} request: only this server's own pages may change the simulation"
            )));
        }
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(WebError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("send the body as Content-Type: application/json (got {content_type:?})"),
        ));
    }
    Ok(())
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
pub fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

pub async fn static_names(req: Request, next: Next) -> Response {
    if req.uri().path().split('/').any(|seg| seg.len() > MAX_NAME_BYTES) {
        return (StatusCode::NOT_FOUND, "Not found").into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn same_origin_rules() {
        let json = ("content-type", "application/json");
        let host = ("host", "127.0.0.1:8000");
        let ok = |h: &[(&'static str, &'static str)]| check_same_origin(&headers(h), true).map_err(|e| e.status);
        assert_eq!(ok(&[host, json]), Ok(()), "no origin: a script");
        assert_eq!(ok(&[host, json, ("origin", "http://127.0.0.1:8000")]), Ok(()));
        assert_eq!(ok(&[("host", "localhost:8000"), ("content-type", "application/json; charset=utf-8")]), Ok(()));
        assert_eq!(ok(&[host, json, ("origin", "http://evil.example")]), Err(StatusCode::FORBIDDEN));
        assert_eq!(ok(&[host, json, ("origin", "null")]), Err(StatusCode::FORBIDDEN));
        assert_eq!(ok(&[host, json, ("origin", "http://127.0.0.1:9999")]), Err(StatusCode::FORBIDDEN));
        assert_eq!(ok(&[host, json, ("sec-fetch-site", "cross-site")]), Err(StatusCode::FORBIDDEN));
        assert_eq!(ok(&[host, ("content-type", "text/plain")]), Err(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        assert_eq!(ok(&[host]), Err(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        // DNS rebinding: the attacker's name, same origin as itself, still not this server.
        assert_eq!(
            ok(&[("host", "rebind.example:8000"), json, ("origin", "http://rebind.example:8000")]),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            check_same_origin(&headers(&[("host", "10.0.0.5:8000"), json]), false).map_err(|e| e.status),
            Ok(()),
            "a server on a public address answers to its own names"
        );
        assert!(
            is_loopback_authority("[::1]:80")
                && is_loopback_authority("localhost")
                && !is_loopback_authority("example.com:80")
        );
    }
}
