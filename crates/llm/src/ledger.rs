//! The token and cost ledger: one JSONL line per LLM call in `storage/<sim>/llm_ledger.jsonl`,
//! plus running totals by role and task for the end-of-run table and the budget cap.
//!
//! Loading an existing ledger at start makes the totals (and so the budget) span a resumed run.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::cache::{load_jsonl, lock};
use crate::config::RoleConfig;

/// One call: a task run (all its attempts) or an embedding request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// UTC wall-clock time the call finished, RFC 3339.
    pub time: String,
    /// Simulation step, when the caller set one with `Llm::set_step`.
    #[serde(default)]
    pub step: Option<u64>,
    pub task: String,
    pub role: String,
    pub provider: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub latency_ms: u64,
    /// Replies asked for in this call (1 + re-asks after bad replies).
    #[serde(default)]
    pub attempts: u32,
    /// Re-asks after bad replies (`attempts - 1`).
    pub retries: u32,
    /// Transport retries inside the provider (429, 5xx, timeouts).
    #[serde(default)]
    pub transport_retries: u32,
    pub fallback_used: bool,
    pub cost_usd: f64,
    /// Every reply of this call came from the LLM cache (so it cost nothing).
    pub cached: bool,
    /// Prompt tokens the provider took from its prefix KV cache instead of computing them
    /// (a hit when above 0).
    #[serde(default)]
    pub prefix_cached_tokens: u64,
    /// Set when the call ended in an error instead of a value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The run was stopped because the estimated spend passed `budget_usd`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("LLM budget exceeded: spent an estimated ${spent_usd:.4} of the ${budget_usd:.4} allowed by `budget_usd`; stopping cleanly")]
pub struct BudgetExceeded {
    pub spent_usd: f64,
    pub budget_usd: f64,
}

/// Estimated cost from the role's prices (USD per million tokens; missing price = free).
pub fn cost_usd(rc: &RoleConfig, prompt_tokens: u64, completion_tokens: u64) -> f64 {
    let p = rc.price_prompt_per_mtok.unwrap_or(0.0) * prompt_tokens as f64;
    let c = rc.price_completion_per_mtok.unwrap_or(0.0) * completion_tokens as f64;
    (p + c) / 1_000_000.0
}

/// Sums over a set of calls.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Tally {
    pub calls: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    pub fallbacks: u64,
    pub cached: u64,
    pub errors: u64,
}

impl Tally {
    fn add(&mut self, e: &LedgerEntry) {
        self.calls += 1;
        self.prompt_tokens += e.prompt_tokens;
        self.completion_tokens += e.completion_tokens;
        self.cost_usd += e.cost_usd;
        self.fallbacks += e.fallback_used as u64;
        self.cached += e.cached as u64;
        self.errors += e.error.is_some() as u64;
    }
}

/// Totals by (role, task) and overall.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LedgerTotals {
    pub by_role_task: BTreeMap<(String, String), Tally>,
    pub total: Tally,
}

impl LedgerTotals {
    pub fn add(&mut self, e: &LedgerEntry) {
        self.by_role_task.entry((e.role.clone(), e.task.clone())).or_default().add(e);
        self.total.add(e);
    }

    pub fn get(&self, role: &str, task: &str) -> Option<&Tally> {
        self.by_role_task.get(&(role.to_string(), task.to_string()))
    }

    /// Totals per role (all tasks of the role summed).
    pub fn by_role(&self) -> BTreeMap<String, Tally> {
        let mut out: BTreeMap<String, Tally> = BTreeMap::new();
        for ((role, _), t) in &self.by_role_task {
            let r = out.entry(role.clone()).or_default();
            r.calls += t.calls;
            r.prompt_tokens += t.prompt_tokens;
            r.completion_tokens += t.completion_tokens;
            r.cost_usd += t.cost_usd;
            r.fallbacks += t.fallbacks;
            r.cached += t.cached;
            r.errors += t.errors;
        }
        out
    }
}

/// A plain-text table for the end of a run.
impl fmt::Display for LedgerTotals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head =
            ["role", "task", "calls", "fallbacks", "cached", "errors", "prompt tok", "completion tok", "cost USD"];
        let row = |role: &str, task: &str, t: &Tally| -> [String; 9] {
            [
                role.to_string(),
                task.to_string(),
                t.calls.to_string(),
                t.fallbacks.to_string(),
                t.cached.to_string(),
                t.errors.to_string(),
                t.prompt_tokens.to_string(),
                t.completion_tokens.to_string(),
                format!("{:.4}", t.cost_usd),
            ]
        };
        let mut rows: Vec<[String; 9]> = self.by_role_task.iter().map(|((r, k), t)| row(r, k, t)).collect();
        rows.push(row("TOTAL", "", &self.total));
        let mut width = head.map(str::len);
        for r in &rows {
            for (w, c) in width.iter_mut().zip(r.iter()) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: &[String]| -> fmt::Result {
            for (i, (c, w)) in cells.iter().zip(width.iter()).enumerate() {
                let sep = if i == 0 { "" } else { "  " };
                if i < 2 {
                    write!(f, "{sep}{c:<w$}")?;
                } else {
                    write!(f, "{sep}{c:>w$}")?;
                }
            }
            writeln!(f)
        };
        line(f, &head.map(String::from))?;
        line(f, &width.map(|w| "-".repeat(w)))?;
        for r in &rows[..rows.len() - 1] {
            line(f, r)?;
        }
        line(f, &width.map(|w| "-".repeat(w)))?;
        line(f, &rows[rows.len() - 1])
    }
}

/// The ledger of one run (or an in-memory one for one-off CLI calls).
#[derive(Debug, Default)]
pub struct Ledger {
    path: Option<PathBuf>,
    totals: Mutex<LedgerTotals>,
    /// Kept open in append mode: a run writes thousands of lines, one `write` each.
    file: Mutex<Option<std::fs::File>>,
}

impl Ledger {
    /// Totals only, nothing written.
    pub fn in_memory() -> Ledger {
        Ledger::default()
    }

    /// Append to `path`, starting the totals from the lines already there.
    pub fn open(path: impl Into<PathBuf>) -> Result<Ledger> {
        let path = path.into();
        let mut totals = LedgerTotals::default();
        for e in load_jsonl::<LedgerEntry>(&path)? {
            totals.add(&e);
        }
        Ok(Ledger { path: Some(path), totals: Mutex::new(totals), file: Mutex::new(None) })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Add a call to the totals and append it to the file.
    pub fn record(&self, e: &LedgerEntry) -> Result<()> {
        if let Some(p) = &self.path {
            let mut f = lock(&self.file);
            if f.is_none() {
                *f = Some(crate::storage::open_append(p)?);
            }
            let line = crate::storage::jsonl_bytes([e])?;
            std::io::Write::write_all(f.as_mut().expect("opened above"), &line)
                .with_context(|| format!("appending to {}", p.display()))?;
        }
        lock(&self.totals).add(e);
        Ok(())
    }

    pub fn totals(&self) -> LedgerTotals {
        lock(&self.totals).clone()
    }

    pub fn spent_usd(&self) -> f64 {
        lock(&self.totals).total.cost_usd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(role: &str, task: &str, cost: f64, fallback: bool) -> LedgerEntry {
        LedgerEntry {
            time: "2026-01-01T00:00:00.000Z".into(),
            step: Some(3),
            task: task.into(),
            role: role.into(),
            provider: "openai".into(),
            model: "m".into(),
            prompt_tokens: 10,
            completion_tokens: 5,
            latency_ms: 7,
            attempts: 1,
            retries: 0,
            transport_retries: 0,
            fallback_used: fallback,
            cost_usd: cost,
            cached: false,
            prefix_cached_tokens: 0,
            error: None,
        }
    }

    #[test]
    fn totals_survive_reopen_and_print() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("llm_ledger.jsonl");
        let l = Ledger::open(&p).unwrap();
        l.record(&entry("user", "daily_plan", 0.5, false)).unwrap();
        l.record(&entry("user", "daily_plan", 0.25, true)).unwrap();
        l.record(&entry("evaluator", "evaluate", 0.0, false)).unwrap();
        let l = Ledger::open(&p).unwrap();
        let t = l.totals();
        assert_eq!(t.total.calls, 3);
        assert_eq!(t.get("user", "daily_plan").unwrap().fallbacks, 1);
        assert!((l.spent_usd() - 0.75).abs() < 1e-12);
        assert_eq!(t.by_role()["user"].prompt_tokens, 20);
        let table = t.to_string();
        assert!(table.contains("daily_plan") && table.contains("TOTAL") && table.contains("0.7500"), "{table}");
    }

    #[test]
    fn cost_uses_prices_per_million() {
        let mut rc = RoleConfig::scripted();
        rc.price_prompt_per_mtok = Some(2.0);
        rc.price_completion_per_mtok = Some(8.0);
        assert!((cost_usd(&rc, 1_000_000, 500_000) - 6.0).abs() < 1e-12);
    }
}
