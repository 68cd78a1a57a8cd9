#!/usr/bin/env python3
"""Load a sim's persona folders the way the original ProPerSim backend does, and fail loudly
where it would crash.

A re-implementation of the loading semantics of the original's `Scratch`, `MemoryTree`
(spatial memory), `AssociativeMemory` and ProPerSim's `EvaluationMemory` (written from their
behaviour, not copied): every file is plain JSON; nodes are read as `node_1 .. node_N` in order
(a missing id is a KeyError); `created`/`expiration` parse as '%Y-%m-%d %H:%M:%S'; and every
node's `embedding_key` is looked up in `embeddings.json` (a missing key is a KeyError, which is
what a torn persona folder gives the original).

Usage: original_loader.py SIM_DIR  -> prints {"personas": {name: {"nodes": n, ...}}} and exits 0,
or prints the error and exits 1.
"""
import datetime
import json
import os
import sys

FMT = "%Y-%m-%d %H:%M:%S"


def load_json(path):
    with open(path) as f:
        return json.load(f)


def load_memory(folder):
    """AssociativeMemory / EvaluationMemory loading: returns the number of nodes."""
    embeddings = load_json(os.path.join(folder, "embeddings.json"))
    nodes = load_json(os.path.join(folder, "nodes.json"))
    for count in range(len(nodes.keys())):
        node_id = f"node_{count + 1}"
        if node_id not in nodes:
            raise KeyError(f"{folder}/nodes.json has no {node_id}")
        d = nodes[node_id]
        for key in ("node_count", "type_count", "type", "depth", "description", "poignancy", "filling"):
            d[key]
        datetime.datetime.strptime(d["created"], FMT)
        if d["expiration"]:
            datetime.datetime.strptime(d["expiration"], FMT)
        key = d["embedding_key"]
        if key not in embeddings:
            raise KeyError(f"{folder}: {node_id}'s embedding_key {key!r} is not in embeddings.json")
        vector = embeddings[key]
        if not isinstance(vector, list) or not all(isinstance(x, (int, float)) for x in vector):
            raise ValueError(f"{folder}: the vector of {key!r} is not a list of numbers")
        set(d["keywords"])
    kw = load_json(os.path.join(folder, "kw_strength.json"))
    kw["kw_strength_event"], kw["kw_strength_thought"]
    return len(nodes)


def main(sim_dir):
    meta = load_json(os.path.join(sim_dir, "reverie", "meta.json"))
    out = {}
    for name in meta["persona_names"]:
        base = os.path.join(sim_dir, "personas", name, "bootstrap_memory")
        load_json(os.path.join(base, "scratch.json"))
        spatial = os.path.join(base, "spatial_memory.json")
        if os.path.exists(spatial):
            load_json(spatial)
        info = {"nodes": load_memory(os.path.join(base, "associative_memory"))}
        evaluation = os.path.join(base, "evaluation_memory")
        if os.path.isdir(evaluation):
            info["evaluation_nodes"] = load_memory(evaluation)
        out[name] = info
    print(json.dumps({"personas": out}))


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except Exception as e:  # the original would crash here
        print(f"{type(e).__name__}: {e}")
        sys.exit(1)
