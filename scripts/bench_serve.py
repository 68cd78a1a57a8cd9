#!/usr/bin/env python3
"""Replay a ProPerSim-shaped trace against any OpenAI-compatible server and report its speed.

The trace is what one awake step of a run asks of its models (ranking on, separate evaluation,
the defaults): concurrently, the assistant's 2 suggestion candidates for one prompt; then,
concurrently, the user's 5 rubric checks for each candidate (10 requests). Steps run in
sequence from 07:00, 2.5 simulated minutes apart. Every answer is schema-bound
(`response_format` json_schema), with the schemas, prompts and token limits our tasks use
(src/assistant/prompt.rs, src/assistant/suggest.rs, src/user/evaluator.rs, `token_bound` in
crates/llm/src/task.rs). As in a run, the shown candidate (the second) and its score go into both
memories, so consecutive steps share most of their prompts and each step's checks judge what the
server answered; an answer that is not valid JSON for its schema counts as invalid and is then
treated as the task's fallback ("No Recommendation", score 0).

Persona: the user and assistant of a ProPerSim seed (default
../shared/frontend_server/storage/base_the_ville_persona_1), read at run time.

Usage: scripts/bench_serve.py --base-url http://127.0.0.1:8080/v1 [--steps 10] [--label NAME]
           [--persona DIR] [--seed 42] [--json-out FILE]
Prints requests/s, mean seconds per step, and the share of valid answers. Python stdlib only.
"""
import argparse
import concurrent.futures
import datetime
import json
import os
import sys
import time
import urllib.error
import urllib.request

NO_REC = "No Recommendation"
DIMENSIONS = ["Personal_Preference", "Timing", "Frequency", "Communication_&_Safety"]
# (task name, rubric key, dimension, question), as in src/user/evaluator.rs.
CHECKS = [
    ("evaluate_preference", "Personal_Preference", "Personal_Preference",
     "Does the content fit what you like to receive? Staying quiet can miss something you would have wanted."),
    ("evaluate_timing", "Timing", "Timing",
     "Is this a moment you welcome hearing from the assistant? Staying quiet at a moment you want to be left alone is right."),
    ("evaluate_frequency_too_often", "Frequency_too_often", "Frequency",
     "Counting this one, would you be hearing suggestions MORE often than you like? If so, the score is 0. Staying quiet never makes it too often."),
    ("evaluate_frequency_too_rarely", "Frequency_too_rarely", "Frequency",
     "Counting this one, would you be hearing suggestions LESS often than you like? If so, the score is 0. A suggestion never makes it too rare."),
    ("evaluate_communication", "Communication_&_Safety", "Communication_&_Safety",
     "Is the tone right for you and does it respect your safety, privacy and boundaries? Staying quiet raises no such issue."),
]
# A morning at home, 10 simulated minutes per activity (4 steps), walking between rooms.
ACTIONS = [
    ("waking up and stretching in the bedroom", False),
    ("making breakfast while an energizing playlist plays", False),
    ("the kitchen", True),
    ("eating breakfast at the kitchen table", False),
    ("rearranging the decor of the living room", False),
    ("sketching new interior design ideas at the desk", False),
    ("the common room", True),
    ("taking a creative break with a cup of coffee", False),
    ("answering client emails about a design project", False),
    ("browsing thrift store listings for unique furniture", False),
]
STEP_SECONDS = 150
START = datetime.datetime(2025, 2, 13, 7, 0, 0)


def text_schema(n):
    return {"type": "string", "minLength": 1, "maxLength": n}


def object_schema(props):
    return {"type": "object", "properties": dict(props), "required": [k for k, _ in props],
            "additionalProperties": False}


SUGGEST_SCHEMA = object_schema([("Suggestion", text_schema(300))])
SCORE_SCHEMA = object_schema([("Score", {"type": "integer", "enum": [0, 1]}), ("Reason", text_schema(200))])


def token_bound(s):
    """Port of `token_bound` (crates/llm/src/task.rs): most tokens a compact answer can take."""
    def bound(s):
        if "enum" in s:
            return max(len(json.dumps(v)) for v in s["enum"]) + 1
        t = s.get("type")
        if t == "string":
            return s.get("maxLength", 256) + 2
        if t in ("integer", "number"):
            return 12
        if t == "boolean":
            return 5
        if t == "array":
            item = bound(s["items"]) if "items" in s else 16
            return s.get("maxItems", 16) * (item + 1) + 2
        if t == "object":
            props = s.get("properties")
            return (sum(len(k) + 4 + bound(v) for k, v in props.items()) if props else 16) + 2
        return 64
    return min(max(bound(s), 16), 4096)


def valid(schema, v):
    """Whether `v` satisfies the schema subset our tasks use."""
    if "enum" in schema and v not in schema["enum"]:
        return False
    t = schema.get("type")
    if t == "object":
        if not isinstance(v, dict):
            return False
        props = schema.get("properties", {})
        if any(k not in v for k in schema.get("required", [])):
            return False
        if schema.get("additionalProperties") is False and any(k not in props for k in v):
            return False
        return all(valid(props[k], x) for k, x in v.items() if k in props)
    if t == "string":
        return isinstance(v, str) and schema.get("minLength", 0) <= len(v) <= schema.get("maxLength", 1 << 30)
    if t == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    return True


def prompt_time(t):
    return t.strftime("%A %B %d -- %I:%M:%S %p")


class Persona:
    """The fields of a seed's scratch.json that prompts use (src/user/profile.rs)."""

    def __init__(self, scratch):
        s = lambda k: "" if scratch.get(k) is None else str(scratch.get(k))
        self.name = s("name")
        self.identity = (
            f"Name: {self.name}\nAge: {s('age')}\nPersonality (Big Five): {s('big_five_personality_traits')}\n"
            f"Background: {s('background')}\nInterests: {s('current_interests')}\nLifestyle: {s('lifestyle')}\n"
            f"Long-term goals: {s('long_term_goals')}\nPlan requirements for today: {s('daily_plan_req')}")
        self.criteria = {k: str(v) for k, v in (scratch.get("criteria") or {}).items()}


def load_personas(folder):
    meta = json.load(open(os.path.join(folder, "reverie", "meta.json")))
    user, assistant = meta["persona_names"][0], meta["persona_names"][1]
    path = os.path.join(folder, "personas", user, "bootstrap_memory", "scratch.json")
    return Persona(json.load(open(path))), assistant


def memory_text(entries):
    """The structured memory's render (src/memory/structured.rs) within the first hour."""
    if not entries:
        return "No interactions yet.\n"
    return "This hour so far:\n" + "".join(f"{prompt_time(t)}\n{text}\n" for t, text in entries)


def suggest_messages(assistant, user, memory, t, action):
    hint = '{"Suggestion": "..."}'
    system = (
        f"You are {assistant}, a proactive assistant living alongside {user}, who spends the whole day at home. "
        f"Every few minutes you see what {user} is doing, together with your memory of earlier moments and of how "
        f"your suggestions landed. Decide whether speaking up right now would genuinely help. Learn {user}'s "
        f"preferences, routines and rhythm from the memory. If a suggestion would not clearly improve this moment, "
        f"answer exactly {{\"Suggestion\": \"No Recommendation\"}}. Otherwise give one concise, specific suggestion "
        f"that fits the moment, in English.\n\nAnswer with JSON only, in the form {hint}.")
    user_msg = (f"[MEMORY]\n{memory}\n[ACTION]\n{prompt_time(t)}\n{user}'s action: {user} is {action}.\n\n"
                f"Answer in the format {hint}")
    return [{"role": "system", "content": system}, {"role": "user", "content": user_msg}]


def check_messages(p, check, memory, t, action, suggestion):
    _, _, dim, question = check
    output = ("No Recommendation (the assistant chose to stay quiet)" if suggestion is None
              else f'"{suggestion}"')
    context = (f"[Who you are]\n{p.identity}\n\n[Your memory of today's suggestions]\n{memory}\n[Now]\n"
               f"{prompt_time(t)}\nYou are {action}.\n\n[The assistant's output]\n{output}")
    system = (f"You are {p.name} judging a home assistant that may speak up at any moment. Judge one thing only, "
              f"strictly by your own rule below, and give a binary score: 1 if it satisfies your rule, 0 if not.")
    user_msg = (f"{context}\n\n[Your rule: {dim.replace('_', ' ')}]\n{p.criteria.get(dim, '')}\n\n{question}\n"
                f'Reply as {{"Score": 0 or 1, "Reason": "one sentence"}}.')
    return [{"role": "system", "content": system}, {"role": "user", "content": user_msg}]


def as_suggestion(text):
    """`Suggestion::from_text`: None for "No Recommendation"."""
    t = text.strip().strip("\"'").strip().rstrip(".").strip()
    return None if not t or t.lower() == NO_REC.lower() else text.strip().strip('"').strip()


class Client:
    def __init__(self, base_url, model, timeout, temperature):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.timeout, self.temperature = model, timeout, temperature

    def ask(self, name, messages, schema, seed):
        body = {
            "model": self.model, "messages": messages, "stream": False,
            "temperature": self.temperature, "top_p": 0.9, "top_k": 50, "repeat_penalty": 1.1, "seed": seed,
            "max_tokens": token_bound(schema),
            "response_format": {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}},
        }
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                reply = json.load(r)
        except urllib.error.HTTPError as e:
            sys.exit(f"{name}: HTTP {e.code}: {e.read()[:500]!r}")
        content = reply["choices"][0]["message"].get("content") or ""
        try:
            value = json.loads(content)
            ok = valid(schema, value)
        except ValueError:
            value, ok = None, False
        usage = reply.get("usage") or {}
        return {
            "name": name, "ok": ok, "value": value if ok else None, "content": content,
            "seconds": time.perf_counter() - t0,
            "prompt_tokens": usage.get("prompt_tokens", 0),
            "completion_tokens": usage.get("completion_tokens", 0),
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
            "finish_reason": reply["choices"][0].get("finish_reason"),
        }


def first_model(base_url, timeout):
    with urllib.request.urlopen(base_url.rstrip("/") + "/models", timeout=timeout) as r:
        return json.load(r)["data"][0]["id"]


def run(args):
    persona, assistant = load_personas(args.persona)
    model = args.model or first_model(args.base_url, args.timeout)
    client = Client(args.base_url, model, args.timeout, args.temperature)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=12)
    # Warm-up (page-in, thread pools), on a prompt unlike the trace's.
    client.ask("warmup", [{"role": "user", "content": "Say hi as JSON."}], SUGGEST_SCHEMA, 1)

    amem, emem, results, steps = [], [], [], []
    load_start = os.getloadavg()[0]
    t_all = time.perf_counter()
    for step in range(args.steps):
        t = START + datetime.timedelta(seconds=STEP_SECONDS * step)
        action, walking = ACTIONS[(step // 4) % len(ACTIONS)]
        user_action = "walking" if walking else action
        user_view = f"walking, on the way to {action}" if walking else action
        t0 = time.perf_counter()
        msgs = suggest_messages(assistant, persona.name, memory_text(amem), t, user_action)
        # Candidate i is its own draw: the run's seed plus 1000 * i (crates/llm/src/client.rs).
        cands = list(pool.map(lambda i: client.ask("suggest", msgs, SUGGEST_SCHEMA, args.seed + 1000 * i), range(2)))
        t1 = time.perf_counter()
        suggestions = [as_suggestion(c["value"]["Suggestion"]) if c["ok"] else None for c in cands]
        ememory = memory_text(emem)
        jobs = [(c, k) for c in range(2) for k in CHECKS]
        checks = list(pool.map(
            lambda job: client.ask(job[1][0], check_messages(persona, job[1], ememory, t, user_view, suggestions[job[0]]),
                                   SCORE_SCHEMA, args.seed), jobs))
        t2 = time.perf_counter()
        scores = [0, 0]
        for c in range(2):
            got = {k[1]: (r["value"]["Score"] if r["ok"] else 0) for (cc, k), r in zip(jobs, checks) if cc == c}
            scores[c] = (got["Personal_Preference"] + got["Timing"]
                         + (got["Frequency_too_often"] and got["Frequency_too_rarely"]) + got["Communication_&_Safety"])
        shown = suggestions[1] if suggestions[1] is not None else NO_REC
        amem.append((t, f"{persona.name}'s action: {user_action}\nAssistant's suggestion: {shown}"))
        emem.append((t, f"{persona.name}'s action: {user_action}\nSuggestion: {shown}\nMy score: {scores[1]:.1f}/4"))
        results += cands + checks
        steps.append({"seconds": t2 - t0, "suggest_s": t1 - t0, "evaluate_s": t2 - t1,
                      "valid": sum(r["ok"] for r in cands + checks), "requests": len(cands) + len(checks)})
        print(f"[{args.label}] step {step} ({t:%H:%M:%S}): {t2 - t0:.1f}s (suggest {t1 - t0:.1f}s, evaluate "
              f"{t2 - t1:.1f}s), valid {steps[-1]['valid']}/{steps[-1]['requests']}, shown: {shown[:60]!r}",
              file=sys.stderr, flush=True)
    wall = time.perf_counter() - t_all
    n = len(results)
    step_s = sorted(s["seconds"] for s in steps)
    out = {
        "label": args.label, "base_url": args.base_url, "model": model, "steps": args.steps, "requests": n,
        "temperature": args.temperature, "load_start": load_start, "load_end": os.getloadavg()[0],
        "wall_s": wall, "requests_per_s": n / wall, "mean_step_s": sum(step_s) / len(steps),
        "median_step_s": (step_s[(len(step_s) - 1) // 2] + step_s[len(step_s) // 2]) / 2,
        "mean_suggest_s": sum(s["suggest_s"] for s in steps) / len(steps),
        "mean_evaluate_s": sum(s["evaluate_s"] for s in steps) / len(steps),
        "valid_share": sum(r["ok"] for r in results) / n,
        "step_s": [s["seconds"] for s in steps],
        "invalid_examples": [r["content"][:160] for r in results if not r["ok"]][:3],
        "finish_length": sum(r["finish_reason"] == "length" for r in results),
        "prompt_tokens": sum(r["prompt_tokens"] for r in results),
        "cached_tokens": sum(r["cached_tokens"] or 0 for r in results),
        "completion_tokens": sum(r["completion_tokens"] for r in results),
    }
    out["completion_tokens_per_s"] = out["completion_tokens"] / wall
    out["completion_tokens_per_request"] = out["completion_tokens"] / n
    if args.dump:
        with open(args.dump, "w") as f:
            for r in results:
                f.write(json.dumps({k: r[k] for k in ("name", "ok", "content", "seconds", "prompt_tokens",
                                                      "cached_tokens", "completion_tokens", "finish_reason")}) + "\n")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--model", help="the request's model field (default: the first of /v1/models)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--temperature", type=float, default=0.7, help="0.7: the local default; 0: greedy")
    ap.add_argument("--dump", help="write every reply (task, content, tokens, seconds) here as JSONL")
    ap.add_argument("--label", default="server")
    ap.add_argument("--timeout", type=float, default=1800)
    here = os.path.dirname(os.path.abspath(__file__))
    shared = os.environ.get("PROPERSIM_SHARED", os.path.join(here, "..", "..", "shared"))
    ap.add_argument("--persona", default=os.path.join(shared, "frontend_server", "storage",
                                                      "base_the_ville_persona_1"))
    ap.add_argument("--json-out", help="also write the summary as JSON here")
    args = ap.parse_args()
    if not os.path.isdir(args.persona):
        sys.exit(f"persona seed folder not found: {args.persona} (set --persona or PROPERSIM_SHARED)")
    out = run(args)
    print(f"{out['label']}: {out['requests']} requests in {out['wall_s']:.1f}s: {out['requests_per_s']:.3f} req/s, "
          f"{out['mean_step_s']:.2f} s/step (median {out['median_step_s']:.2f}; suggest {out['mean_suggest_s']:.2f}, evaluate "
          f"{out['mean_evaluate_s']:.2f}), valid JSON for the schema {100 * out['valid_share']:.1f}%, "
          f"{out['completion_tokens_per_s']:.1f} completion tok/s ({out['completion_tokens_per_request']:.1f} a "
          f"request), load average {out['load_start']:.1f} -> {out['load_end']:.1f}, cached prompt tokens "
          f"{out['cached_tokens']}/{out['prompt_tokens']}")
    if out["invalid_examples"]:
        print(f"  invalid, e.g.: {out['invalid_examples']}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
