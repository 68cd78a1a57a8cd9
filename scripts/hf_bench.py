#!/usr/bin/env python3
"""The baseline for `propersim bench --llm`: PyTorch/transformers on the same GGUF.

transformers cannot run GGUF weights quantized; it dequantizes them (here to f32) on load. The
prompt is built as propersim's benchmark builds it (the same filler sentence repeated in a chat
until it reaches 256 tokens), then 64 greedy tokens are generated one forward at a time with the
KV cache. Prints one JSON line with prompt-processing and generation tokens/s, the best of three
runs after a warm-up. Use the same thread count as propersim (`--threads`, `RAYON_NUM_THREADS`).

Needs torch, transformers and gguf (scripts/peft-requirements.txt has them).

    python scripts/hf_bench.py --gguf MODEL.gguf --threads 1
"""

import argparse
import json
import time

import torch

from hf_gguf import load

PROMPT_TOKENS = 256
GEN_TOKENS = 64
FILLER = ("Isabella is at the cafe counter at 9:30 am, preparing the Valentine's Day party decorations "
          "and chatting with regulars about the weekend. ")


def run(model, ids):
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        prefill = time.perf_counter() - t0
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(GEN_TOKENS - 1):
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        decode = time.perf_counter() - t0
    return ids.shape[1] / prefill, (GEN_TOKENS - 1) / decode


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    tok, model = load(a.gguf, a.threads)
    model.eval()
    load_s = time.perf_counter() - t0

    body, ids = "", []
    while len(ids) < PROMPT_TOKENS:
        body += FILLER
        text = tok.apply_chat_template([{"role": "system", "content": "You are a proactive assistant."},
                                        {"role": "user", "content": body}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False).input_ids
    ids = torch.tensor([ids])
    run(model, ids[:, :16])  # warm-up
    best = [0.0, 0.0]
    for _ in range(3):
        p, d = run(model, ids)
        best = [max(best[0], p), max(best[1], d)]
    print(json.dumps({"engine": f"transformers {__import__('transformers').__version__} / torch {torch.__version__} (f32)",
                      "threads": torch.get_num_threads(), "load_s": load_s, "prompt_tokens": ids.shape[1],
                      "prefill_tok_s": best[0], "decode_tok_s": best[1], "gen_tokens": GEN_TOKENS}))


if __name__ == "__main__":
    main()
