#!/usr/bin/env python3
"""The baseline for `propersim bench --dpo`: TRL's DPOTrainer with PEFT LoRA on the same GGUF.

Same setup as propersim's benchmark: fp32 weights dequantized from the GGUF, LoRA r16 / alpha 32 /
dropout 0.05 on q,k,v,o,gate,up,down, batch 1 x accumulation 4, lr 5e-5, beta 0.1, reference
log-probs computed once before training (the reference is the base with the adapter off), and
`--steps` optimizer steps cycling over the pairs. Prints one JSON line: optimizer steps/s and
tokens/s over the training loop (the reference pass excluded, as propersim reports them), and
the process's peak RSS. Run both with the same thread count (`--threads`, `RAYON_NUM_THREADS`).

Needs torch, transformers, peft, gguf, trl and datasets (not part of the test suite).

    python scripts/trl_bench.py --gguf MODEL.gguf --pairs PAIRS.jsonl --steps 8 --threads 1
"""

import argparse
import json
import resource
import tempfile
import time

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from hf_gguf import load


class Clock(TrainerCallback):
    """Times the optimizer steps (from the first step's start to the last step's end)."""

    def __init__(self):
        self.start = None
        self.end = None
        # Process CPU time (all threads), as propersim's `steps_per_cpu_s`: on a shared machine
        # wall time says more about the neighbours than about the trainer.
        self.cpu_start = None
        self.cpu_end = None

    def on_step_begin(self, args, state, control, **kw):
        if self.start is None:
            self.start = time.perf_counter()
            self.cpu_start = time.process_time()

    def on_step_end(self, args, state, control, **kw):
        self.end = time.perf_counter()
        self.cpu_end = time.process_time()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--gpu", action="store_true",
                    help="train on the GPU with bf16 autocast (as propersim's CUDA build computes in bf16)")
    a = ap.parse_args()

    tok, model = load(a.gguf, a.threads)
    # The weights are dequantized to f32 on load, yet the model stays flagged as a GGUF
    # quantization, which the Trainer refuses to train: clear the flag.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    pairs = [json.loads(l) for l in open(a.pairs, encoding="utf-8") if l.strip()]
    rows = [pairs[i % len(pairs)] for i in range(a.steps * 4)]
    ds = Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows])

    # Tokens per pair as propersim counts them: prompt + completion on both sides.
    def side_tokens(prompt, answer):
        return len(tok(tok.apply_chat_template(prompt + answer, tokenize=False), add_special_tokens=False).input_ids)

    tokens = sum(side_tokens(r["prompt"], r["chosen"]) + side_tokens(r["prompt"], r["rejected"]) for r in rows)

    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    with tempfile.TemporaryDirectory() as out:
        cfg = DPOConfig(output_dir=out, per_device_train_batch_size=1, gradient_accumulation_steps=4,
                        max_steps=a.steps, num_train_epochs=1, learning_rate=5e-5, lr_scheduler_type="linear",
                        max_grad_norm=1.0, beta=0.1, max_length=2304, precompute_ref_log_probs=True,
                        logging_steps=1, report_to=[], save_strategy="no", use_cpu=not a.gpu, bf16=a.gpu,
                        dataloader_num_workers=0, seed=42)
        clock = Clock()
        trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=lora, callbacks=[clock])
        t0 = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - t0
    train_secs = clock.end - clock.start
    print(json.dumps({
        "steps": a.steps,
        "pairs_per_step": 4,
        "seconds": total,
        "steps_per_s": a.steps / train_secs,
        "steps_per_cpu_s": a.steps / (clock.cpu_end - clock.cpu_start),
        "tokens_per_s": tokens / train_secs,
        "tokens": tokens,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "threads": torch.get_num_threads(),
        "device": "cuda" if a.gpu else "cpu",
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if a.gpu else 0,
    }))


if __name__ == "__main__":
    main()
