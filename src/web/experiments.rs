//! The experiment pages: `/experiments/` lists the experiments in storage, `/experiments/<name>/`
//! draws one's curves (the arms side by side, as `propersim report --experiment` writes them),
//! computed from the arms' files on each request and never written.

use axum::extract::{Path as UrlPath, State};
use axum::response::Response;
use serde_json::json;

use super::error::WebError;
use super::pages::html;
use super::AppState;
use crate::report::curve;
use crate::storage::experiment as layout;

/// `GET /experiments/`.
pub async fn list(State(state): State<AppState>) -> Response {
    let storage = state.opts.storage.clone();
    let found = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<serde_json::Value>> {
        let mut out = Vec::new();
        for name in layout::list(&storage)? {
            if let Some(m) = layout::read_manifest(&storage, &name)? {
                out.push(json!({"name": name, "fork": m.fork, "arms": m.arms.join(", "), "days": m.days}));
            }
        }
        Ok(out)
    })
    .await;
    match found {
        Ok(Ok(experiments)) => html(&state, "experiments.html", &json!({"experiments": experiments})),
        Ok(Err(e)) => WebError::from(e).page(&state),
        Err(e) => WebError::internal(e.to_string()).page(&state),
    }
}

/// `GET /experiments/<name>/`.
pub async fn show(State(state): State<AppState>, UrlPath(name): UrlPath<String>) -> Response {
    if !crate::storage::sim::valid_sim_code(&name) {
        return WebError::bad_request(format!("invalid experiment name {name:?}")).page(&state);
    }
    let storage = state.opts.storage.clone();
    let computed = tokio::task::spawn_blocking(move || curve::compute(&storage, &name)).await;
    let c = match computed {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return WebError::not_found(format!("{e:#}")).page(&state),
        Err(e) => return WebError::internal(e.to_string()).page(&state),
    };
    let fmt = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into());
    let mut rows = Vec::new();
    for (arm, days) in &c.arms {
        for d in days {
            rows.push(json!({
                "arm": arm,
                "sim": layout::sim_code(&c.experiment, arm),
                "day": d.day,
                "date": d.date,
                "complete": d.complete,
                "mean_score": fmt(d.mean_score),
                "success_rate": d.success_rate.map(|v| format!("{:.1}%", v * 100.0)).unwrap_or_else(|| "-".into()),
                "recs_per_awake_hour": format!("{:.2}", d.recs_per_awake_hour),
                "pairs_trained": d.pairs_trained.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                "train_loss": fmt(d.train_loss),
                "mmlu": fmt(d.mmlu),
            }));
        }
    }
    let ctx = json!({
        "name": c.experiment,
        "fork": c.fork,
        "rows": rows,
        "partial": c.arms.values().flatten().any(|d| !d.complete),
        "svg": curve::render_svg(&c),
    });
    html(&state, "experiment.html", &ctx)
}
