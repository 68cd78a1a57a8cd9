"""How likely the assistant's sampler is to answer exactly "No Recommendation", with each adapter.

A learning run can stall because the abstention is out of the sampler's reach: the repetition
penalty (Hugging Face's, over prompt and answer so far) divides the logits of every token the
prompt holds, and top-k / top-p then cut what is left to zero. Teacher-forced log-probabilities
(`propersim score`) do not show that cut; this does. For each prompt of a preference-pair file
(TRL conversational JSONL, e.g. an arm's `preferences/day_NN.jsonl`) it applies the sampler step
by step to `No Recommendation"}` after the grammar's `{"Suggestion": "` and prints the chance of
drawing it, plus the rank of the first token `No`, for the base model and then each adapter
(each on a fresh copy of the base).

  target/peft-venv/bin/python scripts/abstention_odds.py MODEL.gguf PAIRS.jsonl \
      [--prompts 6] [--penalty 1.1] [--temperature 0.9] [--top-k 50] [--top-p 0.9] [ADAPTER ...]

The venv is the one `scripts/test.sh` builds (torch, transformers, peft, gguf).
"""

import argparse
import json
import math

import torch
from peft import PeftModel

from hf_gguf import load

PREFIX = '{"Suggestion": "'
ANSWER = 'No Recommendation"}'


def kept(logits, top_k, top_p):
    """token -> probability after top-k then top-p, as the sampler keeps them."""
    values, ids = torch.sort(logits, descending=True)
    values, ids = values[:top_k], ids[:top_k]
    probs = torch.softmax(values, -1)
    before = torch.cumsum(probs, -1) - probs
    keep = before < top_p
    probs, ids = probs[keep], ids[keep]
    return dict(zip(ids.tolist(), (probs / probs.sum()).tolist()))


def odds(tok, model, messages, a):
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    start = len(tok(text + PREFIX, add_special_tokens=False).input_ids)
    ids = tok(text + PREFIX + ANSWER, add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logp, first_rank = 0.0, None
    for pos in range(start, len(ids)):
        step = logits[pos - 1].clone()
        seen = torch.tensor(sorted(set(ids[:pos])))
        held = step[seen]
        step[seen] = torch.where(held > 0, held / a.penalty, held * a.penalty)
        step = step / a.temperature
        if first_rank is None:
            first_rank = int((step > step[ids[pos]]).sum()) + 1
        p = kept(step, a.top_k, a.top_p).get(ids[pos], 0.0)
        logp += math.log(p) if p > 0 else float("-inf")
    return math.exp(logp), first_rank


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("pairs")
    ap.add_argument("adapters", nargs="*")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--penalty", type=float, default=1.1)
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    if a.prompts < 1:
        ap.error("--prompts must be at least 1")
    pairs = [json.loads(line) for line in open(a.pairs) if line.strip()]
    if not pairs:
        ap.error(f"{a.pairs} holds no preference pairs")
    pairs = pairs[:: max(1, len(pairs) // a.prompts)][: a.prompts]
    for name in ["base"] + a.adapters:
        tok, model = load(a.model, a.threads)
        if name != "base":
            model = PeftModel.from_pretrained(model, name)
        got = [odds(tok, model, p["prompt"], a) for p in pairs]
        mean = sum(p for p, _ in got) / len(got)
        print(json.dumps({"model": name, "mean_p": mean, "p": [round(p, 4) for p, _ in got],
                          "rank_of_No": [r for _, r in got]}), flush=True)


if __name__ == "__main__":
    main()
