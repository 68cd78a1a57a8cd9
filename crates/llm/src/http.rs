//! Shared transport for the HTTP providers: one request policy (timeout, bounded retries with
//! exponential backoff, `Retry-After`, a per-provider concurrency limit) and one mapping of HTTP
//! failures to [`ProviderError`], so the OpenAI-compatible and Gemini providers behave the same.
//!
//! The API key lives in [`ApiKey`], whose `Debug` never shows it; every message built from a
//! server reply is scrubbed of the key, because some servers echo it back in their errors.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng;
use serde_json::Value;
use tokio::sync::Semaphore;

use super::ProviderError;
use crate::config::RoleConfig;

/// Default request timeout when `timeout_s` is not configured.
pub const DEFAULT_TIMEOUT_S: f64 = 120.0;
/// Default requests in flight per provider when `concurrency` is not configured.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// Default cap on the total time one call spends waiting between its retries (`max_wait_s`).
pub const DEFAULT_MAX_WAIT_S: f64 = 60.0;

tokio::task_local! {
    /// Transport retries made inside [`counting_retries`].
    static RETRIES: std::cell::Cell<u32>;
}

/// Run `call` and count the transport retries the HTTP providers make inside it, whether it
/// then succeeds or fails, so the caller's ledger line can record every one. Concurrent calls
/// in one task each count their own (the counter lives with the future, not the thread).
pub async fn counting_retries<F: std::future::Future>(call: F) -> (F::Output, u32) {
    RETRIES
        .scope(std::cell::Cell::new(0), async move {
            let out = call.await;
            (out, RETRIES.with(|c| c.get()))
        })
        .await
}

fn note_retry() {
    let _ = RETRIES.try_with(|c| c.set(c.get() + 1));
}

/// A secret API key. It is only ever written into a request header.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }
    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// How the key travels: OpenAI-style `Authorization: Bearer`, or a named header (Gemini's
/// `x-goog-api-key`, which keeps the key out of URLs and therefore out of proxy logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStyle {
    Bearer,
    Header(&'static str),
}

/// Retry settings. Attempts are bounded so a dead server fails a run instead of hanging it.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpPolicy {
    /// Total tries of one request, first included.
    pub max_attempts: u32,
    /// First backoff; doubled on every further retry.
    pub backoff_base: Duration,
    /// Cap on one backoff wait.
    pub backoff_max: Duration,
    /// Cap on a server's `Retry-After` (a misbehaving server cannot park a run for hours).
    pub retry_after_max: Duration,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        HttpPolicy {
            max_attempts: 5,
            backoff_base: Duration::from_millis(1000),
            backoff_max: Duration::from_secs(30),
            retry_after_max: Duration::from_secs(120),
        }
    }
}

/// One provider's HTTP client: connection pool, key, policy and concurrency limit.
pub struct HttpCaller {
    client: reqwest::Client,
    base_url: String,
    limit: Arc<Semaphore>,
    policy: HttpPolicy,
    timeout: Duration,
    /// Cap on the total wait between the retries of one request (`max_wait_s`): a server that
    /// keeps answering 429 with a long `Retry-After` cannot hold a step for many minutes.
    max_wait: Duration,
    concurrency: usize,
    auth: AuthStyle,
    key_env: Option<String>,
    key: Option<ApiKey>,
}

impl fmt::Debug for HttpCaller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCaller")
            .field("base_url", &self.base_url)
            .field("policy", &self.policy)
            .field("timeout", &self.timeout)
            .field("max_wait", &self.max_wait)
            .field("concurrency", &self.concurrency)
            .field("auth", &self.auth)
            .field("key_env", &self.key_env)
            .field("key", &self.key)
            .finish()
    }
}

impl HttpCaller {
    /// Build from a role's settings and the provider's defaults. With no `base_url` the
    /// provider's public endpoint is used, and the key comes from `api_key_env` or else
    /// `default_key_env`; with a `base_url` and no `api_key_env` no key is sent (a local vLLM,
    /// Ollama or llama.cpp server). A missing variable is not an error here, only when a
    /// request is made, so a replayed run needs no keys. A loopback `base_url` (a model server
    /// on this machine) bypasses any `HTTP(S)_PROXY`.
    pub fn new(
        rc: &RoleConfig,
        auth: AuthStyle,
        default_base_url: &str,
        default_key_env: &str,
    ) -> anyhow::Result<HttpCaller> {
        let base_url = rc.base_url.clone().unwrap_or_else(|| default_base_url.to_string());
        check_base_url(&base_url)?;
        let key_env = match (&rc.api_key_env, &rc.base_url) {
            (Some(v), _) => Some(v.clone()),
            (None, None) => Some(default_key_env.to_string()),
            (None, Some(_)) => None,
        };
        let timeout_s = rc.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S);
        if !(timeout_s.is_finite() && timeout_s > 0.0) {
            anyhow::bail!("`timeout_s` must be a positive number of seconds, got {timeout_s}");
        }
        let max_wait_s = rc.max_wait_s.unwrap_or(DEFAULT_MAX_WAIT_S);
        if !(max_wait_s.is_finite() && max_wait_s >= 0.0) {
            anyhow::bail!("`max_wait_s` must be a number of seconds, 0 or more, got {max_wait_s}");
        }
        let concurrency = rc.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if concurrency == 0 {
            anyhow::bail!("`concurrency` must be at least 1");
        }
        let timeout = Duration::from_secs_f64(timeout_s);
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(15)))
            .user_agent(concat!("propersim/", env!("CARGO_PKG_VERSION")));
        if is_loopback(&base_url) {
            builder = builder.no_proxy();
        }
        let client = builder.build().map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {e}"))?;
        let key =
            key_env.as_deref().and_then(|v| std::env::var(v).ok()).filter(|k| !k.trim().is_empty()).map(ApiKey::new);
        Ok(HttpCaller {
            client,
            base_url,
            limit: Arc::new(Semaphore::new(concurrency)),
            policy: HttpPolicy::default(),
            timeout,
            max_wait: Duration::from_secs_f64(max_wait_s),
            concurrency,
            auth,
            key_env,
            key,
        })
    }

    /// The endpoint requests go to (the role's `base_url` or the provider's default).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn set_policy(&mut self, policy: HttpPolicy) {
        self.policy = policy;
    }

    pub fn policy(&self) -> &HttpPolicy {
        &self.policy
    }

    /// POST `body` as JSON to `url` and hand the parsed JSON reply to `extract`. Retries 408,
    /// 425, 429, 5xx, connection errors, timeouts and unparseable bodies, waiting at most
    /// `max_wait_s` in all; gives up at once on 401/403 ([`ProviderError::Auth`]) and other 4xx
    /// ([`ProviderError::BadRequest`]). Returns the extracted value and the number of retries
    /// made (each is also counted for [`counting_retries`]).
    pub async fn post_json<T>(
        &self,
        url: &str,
        body: &Value,
        extract: impl Fn(&Value) -> Result<T, ProviderError>,
    ) -> Result<(T, u32), ProviderError> {
        self.check_key()?;
        let attempts = self.policy.max_attempts.max(1);
        let mut last_error = String::new();
        let mut waited = Duration::ZERO;
        let mut tries = 0;
        while tries < attempts {
            tries += 1;
            let wait = match self.try_once(url, body).await {
                Outcome::Done(value) => return extract(&value).map(|v| (v, tries - 1)),
                Outcome::Fatal(e) => return Err(e),
                Outcome::Retry { message, retry_after } => {
                    last_error = message;
                    retry_after.map(|d| d.min(self.policy.retry_after_max)).unwrap_or_else(|| self.backoff(tries - 1))
                }
            };
            if tries == attempts {
                break;
            }
            let left = self.max_wait.saturating_sub(waited);
            if left.is_zero() && !wait.is_zero() {
                last_error =
                    format!("{last_error} (gave up: `max_wait_s` = {:.1} s spent waiting)", waited.as_secs_f64());
                break;
            }
            let wait = wait.min(left);
            tracing::warn!(url = %redact_url(url), attempt = tries, wait_ms = wait.as_millis() as u64, error = %last_error, "retrying LLM request");
            note_retry();
            tokio::time::sleep(wait).await;
            waited += wait;
        }
        Err(ProviderError::Exhausted { attempts: tries, message: last_error })
    }

    /// One POST of `body` to `url`, no retries: the status and the body as text, whatever they
    /// are. For endpoints that answer in plain text (vLLM's LoRA API) and callers that decide
    /// themselves what to retry. Transport errors come back as [`ProviderError::Other`], with
    /// the key scrubbed.
    pub async fn post_raw(&self, url: &str, body: &Value) -> Result<(u16, String), ProviderError> {
        self.check_key()?;
        let _permit = self
            .limit
            .acquire()
            .await
            .map_err(|_| ProviderError::Other("the provider's request limiter was closed".into()))?;
        let resp = self.request(url, body).send().await.map_err(|e| ProviderError::Other(self.describe(e)))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| ProviderError::Other(self.describe(e)))?;
        Ok((status, self.scrub(&text)))
    }

    /// A key variable that is named but unset fails the request before it is sent.
    fn check_key(&self) -> Result<(), ProviderError> {
        match (&self.key_env, &self.key) {
            (Some(var), None) => Err(ProviderError::Auth {
                status: 0,
                message: format!("the environment variable `{var}` (named by `api_key_env`) is not set or empty"),
            }),
            _ => Ok(()),
        }
    }

    /// A POST of `body` as JSON to `url`, with the key as the provider sends it.
    fn request(&self, url: &str, body: &Value) -> reqwest::RequestBuilder {
        let req = self.client.post(url).json(body);
        match (&self.key, self.auth) {
            (Some(key), AuthStyle::Bearer) => req.bearer_auth(key.expose()),
            (Some(key), AuthStyle::Header(name)) => req.header(name, key.expose()),
            (None, _) => req,
        }
    }

    /// Exponential backoff with jitter in [50%, 100%] so parallel callers don't retry in lockstep.
    fn backoff(&self, retry_index: u32) -> Duration {
        let full = self.policy.backoff_base.saturating_mul(1u32 << retry_index.min(16)).min(self.policy.backoff_max);
        full.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }

    async fn try_once(&self, url: &str, body: &Value) -> Outcome {
        // The permit is held for one attempt only; backoff waits don't occupy a slot.
        let _permit = match self.limit.acquire().await {
            Ok(p) => p,
            Err(_) => return Outcome::Fatal(ProviderError::Other("the provider's request limiter was closed".into())),
        };
        let resp = match self.request(url, body).send().await {
            Ok(r) => r,
            Err(e) => return Outcome::Retry { message: self.describe(e), retry_after: None },
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => return Outcome::Retry { message: self.describe(e), retry_after: None },
        };
        match status {
            200..=299 => match serde_json::from_str::<Value>(&text) {
                Ok(v) => Outcome::Done(v),
                Err(e) => Outcome::Retry {
                    message: self.scrub(&format!(
                        "the server's reply is not valid JSON ({e}); it starts with: {}",
                        snippet(&text)
                    )),
                    retry_after: None,
                },
            },
            401 | 403 => Outcome::Fatal(ProviderError::Auth {
                status,
                message: self.scrub(&format!(
                    "{}; the server said: {}",
                    match &self.key_env {
                        Some(v) => format!("the key comes from the environment variable `{v}`"),
                        None => "no key was sent because `api_key_env` is not set".to_string(),
                    },
                    server_message(&text)
                )),
            }),
            408 | 425 | 429 | 500..=599 => Outcome::Retry {
                message: self.scrub(&format!("HTTP {status}: {}", server_message(&text))),
                retry_after,
            },
            _ => Outcome::Fatal(ProviderError::BadRequest { status, message: self.scrub(&server_message(&text)) }),
        }
    }

    fn describe(&self, e: reqwest::Error) -> String {
        let kind = if e.is_timeout() {
            format!("timed out after {:.1} s (`timeout_s`)", self.timeout.as_secs_f64())
        } else if e.is_connect() {
            "could not connect".to_string()
        } else {
            "transport error".to_string()
        };
        // reqwest's own text includes the URL; strip any query string (Gemini accepts `?key=`).
        let e = e.without_url();
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            source = s.source();
        }
        self.scrub(&format!("{kind}: {detail}"))
    }

    /// Remove the key from text that may have come from the server.
    fn scrub(&self, text: &str) -> String {
        match &self.key {
            Some(k) if !k.expose().is_empty() => text.replace(k.expose(), "<redacted>"),
            _ => text.to_string(),
        }
    }
}

enum Outcome {
    Done(Value),
    Retry { message: String, retry_after: Option<Duration> },
    Fatal(ProviderError),
}

/// `Retry-After` is either delta-seconds or an HTTP date (RFC 9110 §10.2.3). A date in the past
/// means "now".
/// Reject base URLs reqwest would fail on later with a vaguer message.
fn check_base_url(base: &str) -> anyhow::Result<()> {
    let u = reqwest::Url::parse(base).map_err(|e| anyhow::anyhow!("`base_url` {base:?} is not a URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        anyhow::bail!("`base_url` {base:?} must start with http:// or https://");
    }
    Ok(())
}

pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let when: SystemTime = when.with_timezone(&chrono::Utc).into();
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The human part of an error body: OpenAI's and Gemini's `{"error": {"message": ...}}`, a
/// plain `{"error": "..."}` / `{"message": ...}` (llama.cpp, Ollama), or the raw text.
pub fn server_message(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        let found = v
            .pointer("/error/message")
            .or_else(|| v.get("error").filter(|e| e.is_string()))
            .or_else(|| v.get("message"))
            .or_else(|| v.get("detail"))
            .and_then(|m| m.as_str());
        if let Some(m) = found {
            return m.to_string();
        }
    }
    if body.trim().is_empty() {
        "(empty body)".to_string()
    } else {
        snippet(body)
    }
}

fn snippet(text: &str) -> String {
    const MAX: usize = 300;
    let t = text.trim();
    if t.chars().count() <= MAX {
        t.to_string()
    } else {
        format!("{}…", t.chars().take(MAX).collect::<String>())
    }
}

fn redact_url(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// Whether a URL points at this machine.
pub fn is_loopback(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else { return false };
    let Some(host) = u.host_str() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Join a base URL and a path with exactly one slash.
pub fn join_url(base: &str, path: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), path.trim_start_matches('/'))
}

/// Estimated tokens when a provider reports none: about four characters per token.
pub fn estimate_tokens(chars: usize) -> u64 {
    chars.div_ceil(4) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after(" 2.5 ", now), Some(Duration::from_millis(2500)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn server_messages_are_found() {
        assert_eq!(server_message(r#"{"error":{"message":"bad model","type":"x"}}"#), "bad model");
        assert_eq!(server_message(r#"{"error":"no such model"}"#), "no such model");
        assert_eq!(server_message(""), "(empty body)");
        assert_eq!(server_message("plain text"), "plain text");
    }

    #[tokio::test]
    async fn retries_are_counted_per_call_and_waits_are_capped() {
        // A loopback server that answers 429 with `Retry-After: 30` to everything.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 65536];
                    let mut seen = Vec::new();
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&seen);
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len: usize = text[..end]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if seen.len() >= end + 4 + len {
                                seen.clear();
                                let r =
                                    "HTTP/1.1 429 Too Many Requests\r\nretry-after: 30\r\ncontent-length: 2\r\n\r\n{}";
                                if s.write_all(r.as_bytes()).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        let mut rc = RoleConfig::scripted();
        rc.base_url = Some(base.clone());
        rc.max_wait_s = Some(0.3);
        let caller = HttpCaller::new(&rc, AuthStyle::Bearer, &base, "UNUSED").unwrap();
        let t0 = std::time::Instant::now();
        let (r, retries) = counting_retries(caller.post_json(&base, &serde_json::json!({}), |v| Ok(v.clone()))).await;
        let took = t0.elapsed();
        // One wait of 0.3 s (the cap, not the server's 30 s), then no time left: two tries.
        assert!(matches!(r, Err(ProviderError::Exhausted { attempts: 2, .. })), "{r:?}");
        assert_eq!(retries, 1);
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{took:?}");
        // Two calls in one task count their own retries.
        let empty = serde_json::json!({});
        let (a, b) = tokio::join!(
            counting_retries(caller.post_json(&base, &empty, |v| Ok(v.clone()))),
            counting_retries(async { 7 })
        );
        assert_eq!((a.1, b), (1, (7, 0)));
    }

    #[test]
    fn key_is_redacted_in_debug() {
        let k = ApiKey::new("sk-very-secret");
        assert!(!format!("{k:?}").contains("sk-very"));
    }

    #[test]
    fn urls_join() {
        assert_eq!(join_url("http://h/v1/", "/chat/completions"), "http://h/v1/chat/completions");
        assert_eq!(estimate_tokens(9), 3);
        assert!(
            is_loopback("http://127.0.0.1:8000/v1")
                && is_loopback("http://localhost:11434/v1")
                && is_loopback("http://[::1]:80")
        );
        assert!(!is_loopback("https://api.openai.com/v1") && !is_loopback("not a url"));
    }
}
