#!/usr/bin/env python3
"""Load a propersim adapter with Hugging Face PEFT and score preference pairs with it.

Checks that `adapters/day_NN/` (or `propersim train --out DIR`) is a real PEFT LoRA adapter:
transformers loads the base model from the same GGUF file propersim used, `PeftModel` loads the
adapter, and this script prints, per pair, the same JSON fields as `propersim score` (summed
completion log-probs with the adapter and with it disabled, and the completion token counts).
The completion tokens are found the way propersim (and TRL's DPO) find them: the chat template's
rendering of prompt + answer minus the rendering of the prompt with the generation prompt, then
the tokenizer's EOS token, which TRL 0.19 appends to every DPO completion.

Needs torch, transformers, peft and gguf (see scripts/peft-requirements.txt).

    python scripts/peft_check.py --gguf MODEL.gguf --adapter DIR --pairs PAIRS.jsonl
"""

import argparse
import json
import os
import sys

import torch
from peft import PeftModel

from hf_gguf import load


def completion_ids(tok, prompt, answer):
    prompt_text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tok.apply_chat_template(prompt + answer, tokenize=False)
    p = tok(prompt_text, add_special_tokens=False).input_ids
    f = tok(full_text, add_special_tokens=False).input_ids
    if len(f) > len(p) and f[: len(p)] == p:
        return p, f[len(p):] + [tok.eos_token_id]
    if not full_text.startswith(prompt_text):
        raise SystemExit("the chat template's rendering of prompt + answer does not start with the prompt")
    return p, tok(full_text[len(prompt_text):], add_special_tokens=False).input_ids + [tok.eos_token_id]


def summed_logp(model, prompt_ids, completion):
    ids = torch.tensor([prompt_ids + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)
    return logp.gather(1, torch.tensor(completion).unsqueeze(1)).sum().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", required=True, help="the base model's GGUF file")
    ap.add_argument("--adapter", required=True, help="a PEFT adapter folder written by propersim")
    ap.add_argument("--pairs", required=True, help="preference pairs, JSONL (prompt/chosen/rejected messages)")
    a = ap.parse_args()

    tok, base = load(a.gguf, threads=max(1, os.cpu_count() or 1))
    model = PeftModel.from_pretrained(base, a.adapter)
    model.eval()
    # PEFT warns about, rather than fails on, names it cannot place: insist that every LoRA
    # tensor of the file landed on a module.
    loaded = sum(1 for n, _ in model.named_parameters() if "lora_" in n)
    print(json.dumps({"lora_tensors": loaded}), file=sys.stderr)

    for line in open(a.pairs, encoding="utf-8"):
        if not line.strip():
            continue
        pair = json.loads(line)
        out = {}
        for side in ("chosen", "rejected"):
            p, c = completion_ids(tok, pair.get("prompt", []), pair[side])
            out[side] = summed_logp(model, p, c)
            with model.disable_adapter():
                out["ref_" + side] = summed_logp(model, p, c)
            out[side + "_tokens"] = len(c)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
