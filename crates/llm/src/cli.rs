//! The `propersim llm chat` and `propersim llm embed` commands: talk to one role's configured
//! model directly, to check a configuration before starting a long run.

use anyhow::Result;

use super::{Llm, Message};
use crate::config::{Config, Role};

/// Send `text` as one user message to `role`'s configured model and return its reply.
pub async fn chat(cfg: &Config, role: Role, text: &str) -> Result<String> {
    if text.trim().is_empty() {
        anyhow::bail!("nothing to send: the message text is empty");
    }
    let llm = Llm::from_config(cfg)?;
    let reply = llm.chat(role, vec![Message::user(text)]).await?;
    tracing::info!(role = %role, prompt_tokens = reply.prompt_tokens, completion_tokens = reply.completion_tokens, retries = reply.retries, "llm chat");
    Ok(reply.text)
}

/// Embed `text` with the embedding role; returns the vector's size and its Euclidean norm
/// (about 1.0 for normalized sentence embedders).
pub async fn embed(cfg: &Config, text: &str) -> Result<(usize, f32)> {
    let llm = Llm::from_config(cfg)?;
    let v = llm.embed(text).await?;
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    Ok((v.len(), norm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProviderKind;

    #[tokio::test]
    async fn scripted_embed_and_chat_refusal() {
        let mut cfg = Config::default();
        cfg.set_all_providers(ProviderKind::Scripted);
        let (n, norm) = embed(&cfg, "walk to the park").await.unwrap();
        assert_eq!(n, 256);
        assert!((norm - 1.0).abs() < 1e-5);
        let e = chat(&cfg, Role::User, "hello").await.unwrap_err().to_string();
        assert!(e.contains("scripted"), "{e}");
        assert!(chat(&cfg, Role::User, "  ").await.is_err());
    }
}
