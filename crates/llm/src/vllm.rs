//! vLLM's runtime LoRA API, for an assistant served by vLLM and trained between days: each
//! day's adapter is loaded with `POST {base}/load_lora_adapter {"lora_name", "lora_path"}`, the
//! one before it dropped with `POST {base}/unload_lora_adapter {"lora_name"}`, and requests name
//! the adapter as their `model`. The server must run with `--enable-lora`, a `--max-lora-rank`
//! of at least our rank (16), and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`.
//!
//! vLLM answers both endpoints with plain text on success ("Success: LoRA adapter ... added
//! successfully.") and an OpenAI-style error object otherwise, so these calls read the status
//! and the raw body rather than going through the JSON path of the chat requests.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use super::http::{join_url, server_message, AuthStyle, HttpCaller};
use super::openai::{DEFAULT_BASE_URL, DEFAULT_KEY_ENV};
use crate::config::RoleConfig;

/// Tries of one adapter load before the run stops.
pub const LOAD_TRIES: u32 = 4;
/// Wait before the second try; it doubles for each one after (0.5 + 1 + 2 s in all).
pub const LOAD_BACKOFF: Duration = Duration::from_millis(500);

/// The name a sim's adapter of day `day` is served under: unique per sim and day, so a resumed
/// run (or a restarted server) loads the same adapter under the same name, and sims sharing a
/// server never replace each other's adapters.
pub fn lora_name(sim: &str, day: u32) -> String {
    format!("{sim}-day-{day:02}")
}

/// The server refused an adapter on every try.
#[derive(Debug, thiserror::Error)]
#[error(
    "the vLLM server at {url} did not load the LoRA adapter `{name}` from {path} after {tries} tries; \
     its last answer: {answer}. The server needs --enable-lora, --max-lora-rank 16 (or more), \
     VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in its environment, and read access to that folder \
     (same machine or shared storage)"
)]
pub struct LoraLoadRefused {
    pub url: String,
    pub name: String,
    pub path: String,
    pub tries: u32,
    pub answer: String,
}

/// A vLLM server's runtime LoRA endpoints, reached with the assistant role's URL and key.
#[derive(Debug)]
pub struct LoraServer {
    http: HttpCaller,
}

impl LoraServer {
    /// From the assistant's role settings (`base_url` and `api_key_env` as its chat requests).
    pub fn new(rc: &RoleConfig) -> Result<LoraServer> {
        Ok(LoraServer { http: HttpCaller::new(rc, AuthStyle::Bearer, DEFAULT_BASE_URL, DEFAULT_KEY_ENV)? })
    }

    pub fn base_url(&self) -> &str {
        self.http.base_url()
    }

    /// Load the adapter in `path` (absolute: the server reads it) as `name`. Any failure is
    /// retried with doubling waits; after the last try the error is [`LoraLoadRefused`] with
    /// the server's answer. An adapter already loaded under this name counts as loaded: names
    /// are per sim and day, so it is this adapter (a rerun against a server that kept it).
    pub async fn load(&self, name: &str, path: &Path) -> Result<()> {
        let url = join_url(self.http.base_url(), "load_lora_adapter");
        let body = json!({"lora_name": name, "lora_path": path.display().to_string()});
        let mut answer = String::new();
        for attempt in 0..LOAD_TRIES {
            if attempt > 0 {
                tokio::time::sleep(LOAD_BACKOFF.saturating_mul(1 << (attempt - 1).min(16))).await;
            }
            match self.http.post_raw(&url, &body).await {
                Ok((200..=299, _)) => return Ok(()),
                Ok((status, text)) => {
                    let msg = server_message(&text);
                    if status == 400 && msg.contains("already been loaded") {
                        return Ok(());
                    }
                    answer = format!("HTTP {status}: {}", msg.trim_end_matches('.'));
                }
                Err(e) => answer = e.to_string(),
            }
            tracing::warn!(%url, name, attempt = attempt + 1, %answer, "loading a LoRA adapter into vLLM failed");
        }
        Err(LoraLoadRefused {
            url,
            name: name.to_string(),
            path: path.display().to_string(),
            tries: LOAD_TRIES,
            answer,
        }
        .into())
    }

    /// Unload the adapter served as `name`, once. `Ok(false)`: the server does not have it (it
    /// restarted, or never loaded it). Other failures are errors for the caller to report; an
    /// adapter left loaded only takes one of the server's LoRA slots.
    pub async fn unload(&self, name: &str) -> Result<bool> {
        let url = join_url(self.http.base_url(), "unload_lora_adapter");
        let (status, text) = self.http.post_raw(&url, &json!({"lora_name": name})).await?;
        match status {
            200..=299 => Ok(true),
            404 => Ok(false),
            400 if server_message(&text).contains("cannot be found") => Ok(false),
            _ => {
                anyhow::bail!("unloading the LoRA adapter `{name}` at {url}: HTTP {status}: {}", server_message(&text))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_per_sim_and_day() {
        assert_eq!(lora_name("run_a", 3), "run_a-day-03");
        assert_ne!(lora_name("run_a", 3), lora_name("run_b", 3));
    }
}
