"""How many SMS ham messages a person calls negative: the hand-labelled SMS texts (training/labels/*.tsv) matched
back to the SMS collection, the share labelled negative among those that are ham, with its Wilson 95% interval.

The yardstick for "SMS ham called negative": a model that calls far fewer ham messages negative than the labelling
guide does misses real negatives rather than reading ordinary messages better.

    .venv/bin/python benchmarks/labelled_ham.py --out benchmarks/results/labelled_ham.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABELS = ROOT / "training" / "labels"
SMS = ROOT.parent / "shared" / "data" / "sms" / "SMSSpamCollection.tsv"


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sms", default=str(SMS))
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    kind = {}
    for line in Path(args.sms).read_text(encoding="utf-8").splitlines()[1:]:
        label, text = line.split("\t", 1)
        kind.setdefault(text.strip(), label)
    result = {"command": "python benchmarks/labelled_ham.py", "sets": {}}
    total = Counter()
    for name in ("messages_train.tsv", "messages_dev.tsv"):
        with open(LABELS / name, encoding="utf-8", newline="") as f:
            rows = [r for r in csv.DictReader(f, delimiter="\t") if r["source"] == "sms"]
        counts = Counter(r["label"] for r in rows if kind.get(r["text"].strip()) == "ham")
        unmatched = sum(1 for r in rows if r["text"].strip() not in kind)
        total.update(counts)
        n = sum(counts.values())
        result["sets"][name] = {"ham": n, "labels": dict(counts), "unmatched_sms_texts": unmatched,
                                "negative_share": round(counts["negative"] / n, 4)}
    n, k = sum(total.values()), total["negative"]
    lo, hi = wilson(k, n)
    result["all"] = {"ham": n, "negative": k, "negative_share": round(k / n, 4),
                     "wilson_95": [round(lo, 4), round(hi, 4)]}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
