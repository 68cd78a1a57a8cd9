//! The sweep pages: `/sweeps/` lists the sweeps in storage, `/sweeps/<name>/` shows one's
//! aggregate report (the `propersim report --sweep` table and chart), computed from the files on
//! each request and never written.

use axum::extract::{Path as UrlPath, State};
use axum::response::Response;
use serde_json::json;

use super::error::WebError;
use super::pages::html;
use super::AppState;
use crate::report::sweep as aggregate;
use crate::storage::sweep as layout;

/// `GET /sweeps/`.
pub async fn list(State(state): State<AppState>) -> Response {
    let storage = state.opts.storage.clone();
    let found = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<serde_json::Value>> {
        let mut out = Vec::new();
        for name in layout::list(&storage)? {
            let m = layout::read_manifest(&storage, &name)?;
            out.push(json!({
                "name": name,
                "personas": m.as_ref().map(|m| crate::sim::sweep::ranges(&m.personas)),
                "days": m.as_ref().map(|m| m.days),
                "train_mode": m.as_ref().map(|m| m.train_mode.clone()),
            }));
        }
        Ok(out)
    })
    .await;
    match found {
        Ok(Ok(sweeps)) => html(&state, "sweeps.html", &json!({"sweeps": sweeps})),
        Ok(Err(e)) => WebError::from(e).page(&state),
        Err(e) => WebError::internal(e.to_string()).page(&state),
    }
}

/// `GET /sweeps/<name>/`.
pub async fn show(State(state): State<AppState>, UrlPath(name): UrlPath<String>) -> Response {
    if !crate::storage::sim::valid_sim_code(&name) {
        return WebError::bad_request(format!("invalid sweep name {name:?}")).page(&state);
    }
    let storage = state.opts.storage.clone();
    // Reading every movement file of every sim is slow blocking work: keep it off the workers.
    let computed = tokio::task::spawn_blocking(move || aggregate::report(&storage, &name)).await;
    let r = match computed {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return WebError::not_found(format!("{e:#}")).page(&state),
        Err(e) => return WebError::internal(e.to_string()).page(&state),
    };
    let (header, rows) = aggregate::table_cells(&r);
    let ctx = json!({
        "name": r.sweep,
        "sims": r.sims,
        "missing": r.missing,
        "header": header,
        "rows": rows,
        "svg": aggregate::render_svg(&r),
    });
    html(&state, "sweep.html", &ctx)
}
