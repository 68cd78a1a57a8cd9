#!/usr/bin/env python3
"""Hugging Face's side of tests/prompt_parity.rs: chat-template ids and PyTorch greedy output.

Reads one JSON request on stdin and writes one JSON answer on stdout:

    {"chats": [MESSAGES, ...],                       # rendered and tokenized only
     "generate": [{"messages": MESSAGES, "max_new_tokens": N}, ...]}

For every chat it reports `apply_chat_template(messages, add_generation_prompt=True)` as text
and as ids (`tokenize=True`). For every generation it runs the model in f32 with
`generate(do_sample=False)` and no repetition penalty, and reports the new tokens, the logits
at the first generated position, and per step the margin between the two best logits (a small
margin marks a near-tie, where f32 rounding may legitimately pick the other token).

Which tokenizer: transformers builds the tokenizer of a GGUF file from its metadata, but its
GGUF converter ignores `tokenizer.ggml.pre` and gives every byte-level BPE model GPT-2's
pre-tokenizer. For SmolLM2 (`pre = smollm`) that drops the model's own digit splitting: the
real `tokenizer.json` of HuggingFaceTB/SmolLM2-*-Instruct pre-tokenizes with
`Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)]`,
so `2024` is four tokens to the model and one or two to the converted tokenizer. The reference
ids here use the real model's pre-tokenizer (`ids`); the converter's ids are reported beside
them (`gguf_converter_ids`) so the difference stays visible.

    python scripts/hf_parity.py --gguf MODEL.gguf < request.json
"""

import argparse
import json
import sys

import gguf
import torch
from tokenizers import pre_tokenizers

from hf_gguf import load

# The pre-tokenizer of each model family's own tokenizer.json, keyed by `tokenizer.ggml.pre`,
# where transformers' GGUF converter builds a different one. Families not listed keep the
# converter's tokenizer.
REAL_PRE_TOKENIZERS = {
    "smollm": lambda: pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    ),
}


def gguf_pre(path):
    field = gguf.GGUFReader(path).fields.get("tokenizer.ggml.pre")
    return field.contents() if field is not None else None


def ids_of(encoded):
    """`apply_chat_template(tokenize=True)` returns a list in transformers 4 and a BatchEncoding in 5."""
    if isinstance(encoded, list):
        return [int(i) for i in encoded]
    return [int(i) for i in encoded["input_ids"]]


def chat_ids(tok, messages):
    return ids_of(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    req = json.load(sys.stdin)

    tok, model = load(a.gguf, threads=a.threads)
    model.eval()
    pre = gguf_pre(a.gguf)
    converter_pre = json.loads(tok.backend_tokenizer.to_str()).get("pre_tokenizer")
    converter_ids = [chat_ids(tok, m) for m in req.get("chats", [])]
    if pre in REAL_PRE_TOKENIZERS:
        tok.backend_tokenizer.pre_tokenizer = REAL_PRE_TOKENIZERS[pre]()

    out = {
        "gguf_pre": pre,
        "converter_pre_tokenizer": converter_pre,
        "pre_tokenizer": json.loads(tok.backend_tokenizer.to_str()).get("pre_tokenizer"),
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "chats": [],
        "generate": [],
    }
    for messages, conv in zip(req.get("chats", []), converter_ids):
        out["chats"].append(
            {
                "text": tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                "ids": chat_ids(tok, messages),
                "gguf_converter_ids": conv,
            }
        )

    for g in req.get("generate", []):
        ids = chat_ids(tok, g["messages"])
        prompt = torch.tensor([ids])
        with torch.no_grad():
            res = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=g["max_new_tokens"],
                do_sample=False,
                repetition_penalty=1.0,
                temperature=None,
                top_k=None,
                top_p=None,
                output_logits=True,
                return_dict_in_generate=True,
            )
        new = res.sequences[0][len(ids) :].tolist()
        margins = []
        for step in res.logits:
            top2 = torch.topk(step[0].float(), 2).values
            margins.append(float(top2[0] - top2[1]))
        out["generate"].append(
            {
                "prompt_ids": ids,
                "tokens": new,
                "text": tok.decode(new, skip_special_tokens=True),
                "first_logits": res.logits[0][0].float().tolist(),
                "margins": margins,
                "eos_token_id": model.generation_config.eos_token_id,
            }
        )
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
