"""Build the example archive that `screener demo` scans: 90 days of real messages from simulated users.

How to run (from the repository root):
    python examples/build_archive.py --out screener/demo_data/archive.parquet
    python examples/build_archive.py --ordinary 240 --distressed 60 --out /tmp/archive.parquet   (a larger one)

Texts are real messages hand-labelled negative, neutral or positive by the team
(training/labels/messages_dev.tsv: SMS from the UCI SMS Spam Collection, Almeida & Hidalgo, 2011, CC BY 4.0, and
posts from the Sentiment140 training set, Go, Bhayani & Huang, 2009, with @handles and links masked). It is the
development set, never trained on, so a model is not shown texts it learnt. Users, times and who turns
negative are simulated with a fixed seed:
- ordinary users write mostly neutral and positive messages and a negative one now and then;
- distressed users write like ordinary users, then in the last 7 days twice as often and mostly negative messages.
The returned table has the archive's columns; `build` also returns which users are distressed.
"""

from __future__ import annotations

import argparse
import csv
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
LABELLED = ROOT / "training" / "labels" / "messages_dev.tsv"
END = datetime(2026, 3, 1, tzinfo=timezone.utc)
DAYS = 90
DISTRESS_DAYS = 7
# Share of each class in what a user writes: (negative, neutral, positive).
ORDINARY = (0.05, 0.65, 0.30)
DISTRESSED = (0.85, 0.10, 0.05)


def read_labelled(path: Path = LABELLED) -> dict[str, list[str]]:
    texts: dict[str, list[str]] = {"negative": [], "neutral": [], "positive": []}
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            texts[row["label"]].append(row["text"])
    return texts


def build(seed: int = 20261201, n_ordinary: int = 48, n_distressed: int = 10) -> tuple[pa.Table, set[str]]:
    rng = np.random.default_rng(seed)
    texts = read_labelled()
    classes = ("negative", "neutral", "positive")
    kinds = ["ordinary"] * n_ordinary + ["distressed"] * n_distressed
    rng.shuffle(kinds)
    rows, distressed = [], set()
    for u, kind in enumerate(kinds):
        user = f"user-{u + 1:03d}"
        if kind == "distressed":
            distressed.add(user)
        rate = rng.uniform(0.5, 1.5)
        for day in range(DAYS):
            day_start = END - timedelta(days=DAYS - day)
            late = kind == "distressed" and DAYS - day <= DISTRESS_DAYS
            shares = DISTRESSED if late else ORDINARY
            for _ in range(rng.poisson(rate * (2.0 if late else 1.0))):
                pool = texts[classes[rng.choice(3, p=shares)]]
                when = day_start + timedelta(seconds=float(rng.uniform(7 * 3600, 23 * 3600)))
                rows.append((user, when, pool[rng.integers(len(pool))]))
    rows.sort(key=lambda r: r[1])
    table = pa.table({
        "message_id": pa.array([f"msg-{i + 1:06d}" for i in range(len(rows))], pa.string()),
        "user_id": pa.array([r[0] for r in rows], pa.string()),
        "sent_at": pa.array([r[1] for r in rows], pa.timestamp("us", tz="UTC")),
        "text": pa.array([r[2] for r in rows], pa.string()),
    })
    return table, distressed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="screener/demo_data/archive.parquet")
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--ordinary", type=int, default=48)
    parser.add_argument("--distressed", type=int, default=10)
    args = parser.parse_args()
    table, distressed = build(args.seed, args.ordinary, args.distressed)
    pq.write_table(table, args.out, compression="zstd")
    print(f"wrote {table.num_rows} messages from {len(set(table['user_id'].to_pylist()))} users "
          f"({len(distressed)} distressed: {', '.join(sorted(distressed))}) to {args.out}")


if __name__ == "__main__":
    main()
