//! Chat templates: the Jinja template a model ships (`tokenizer.chat_template`) or one from the
//! config, rendered with minijinja the way `transformers` renders it (trim/lstrip blocks, Python
//! string methods via pycompat, `raise_exception`, `bos_token`/`eos_token`,
//! `add_generation_prompt`).

use anyhow::{anyhow, Result};
use minijinja::{context, Environment, Error, ErrorKind, Value};

use crate::Message;

/// ChatML, used when a model ships no template (many small instruct models speak it).
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// A compiled chat template plus the special-token strings it may reference.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    source: String,
}

impl ChatTemplate {
    /// Compile `source`. Errors name the template problem (syntax) so a bad config is clear.
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        // transformers compiles chat templates with these two options set.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, format!("chat template raised: {msg}")))
        });
        env.add_function("strftime_now", |fmt: String| -> Result<Value, Error> {
            Ok(Value::from(chrono::Local::now().format(&fmt).to_string()))
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| anyhow!("the chat template does not compile: {e:#}"))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.unwrap_or("").to_string(),
            eos_token: eos_token.unwrap_or("").to_string(),
            source: source.to_string(),
        })
    }

    /// The prompt text for `messages`. With `add_generation_prompt`, it ends with the opening of
    /// an assistant turn, so the model's continuation is the answer. The training code relies on
    /// `render(prompt + [answer], false)` starting with `render(prompt, true)` for ChatML.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template("chat").map_err(|e| anyhow!("{e}"))?;
        let ctx = context! {
            messages => Value::from_serialize(messages),
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
            add_generation_prompt => add_generation_prompt,
        };
        tmpl.render(ctx).map_err(|e| anyhow!("rendering the chat template failed: {e:#}"))
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_fallback_renders_turns_and_generation_prompt() {
        let t = ChatTemplate::new(CHATML, None, None).unwrap();
        let msgs = vec![Message::system("Be brief."), Message::user("Hi")];
        let s = t.render(&msgs, true).unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let s2 = t.render(&msgs, false).unwrap();
        assert!(!s2.ends_with("assistant\n"));
    }

    #[test]
    fn pycompat_methods_and_raise_exception_work() {
        let src = "{% for m in messages %}{% if m['role'] not in ['user','assistant'] %}{{ raise_exception('bad role ' + m['role']) }}{% endif %}{{ m['content'].strip().upper() }}{{ bos_token }}{% endfor %}";
        let t = ChatTemplate::new(src, Some("<s>"), Some("</s>")).unwrap();
        assert_eq!(t.render(&[Message::user("  hi ")], false).unwrap(), "HI<s>");
        let err = t.render(&[Message::system("x")], false).unwrap_err().to_string();
        assert!(err.contains("bad role system"), "{err}");
    }

    #[test]
    fn bad_template_is_a_clear_error() {
        let err = ChatTemplate::new("{% for %}", None, None).err().expect("must fail").to_string();
        assert!(err.contains("chat template"), "{err}");
    }
}
