"""Build the example archive that `screener demo` scans: about 90 days of messages from simulated users.

How to run (from the repository root, with ../shared beside it):
    python examples/build_archive.py --out screener/demo_data/archive.parquet

Texts are real: SMS messages from the UCI SMS Spam Collection (Almeida & Hidalgo, 2011, CC BY 4.0) and
sentences from SST-2 (Socher et al., 2013). Users, times and who turns negative are simulated with a fixed seed:
- steady users write everyday SMS and the occasional positive or negative sentence;
- turning users write like steady users, then in the last two weeks mostly negative sentences;
- gloomy users are negative about half the time all along (high baseline: flagged, but not escalating).
"""

from __future__ import annotations

import argparse
import csv
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
END = datetime(2026, 3, 1, tzinfo=timezone.utc)
DAYS = 90


def detokenize(sentence: str) -> str:
    """SST-2 is tokenized ("it 's a film , and ..."); make it read like a message."""
    s = sentence.strip()
    s = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", s)
    s = re.sub(r" ([,.!?;:])", r"\1", s)
    s = s.replace("-lrb- ", "(").replace(" -rrb-", ")")
    return s[:1].upper() + s[1:]


def read_sst2(path: Path) -> tuple[list[str], list[str]]:
    pos, neg = [], []
    with path.open(encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        for sentence, label in reader:
            if len(sentence.split()) < 7:
                continue
            (pos if label == "1" else neg).append(detokenize(sentence))
    return pos, neg


def read_sms(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        return [text for label, text in reader if label == "ham" and len(text.split()) >= 3]


def build(seed: int = 20261129, n_steady: int = 46, n_turning: int = 8, n_gloomy: int = 4) -> pa.Table:
    rng = np.random.default_rng(seed)
    pos, neg = read_sst2(SHARED / "data/sst2/train.tsv")
    sms = read_sms(SHARED / "data/sms/SMSSpamCollection.tsv")
    kinds = ["steady"] * n_steady + ["turning"] * n_turning + ["gloomy"] * n_gloomy
    rng.shuffle(kinds)
    rows = []
    for u, kind in enumerate(kinds):
        user = f"user-{u + 1:03d}"
        rate = rng.uniform(0.4, 2.0)
        for day in range(DAYS):
            day_start = END - timedelta(days=DAYS - day)
            days_left = DAYS - day
            if kind == "turning" and days_left <= 14:
                p_neg, rate_today = 0.8, rate * 1.5
            elif kind == "gloomy":
                p_neg, rate_today = 0.5, rate
            else:
                p_neg, rate_today = 0.08, rate
            for _ in range(rng.poisson(rate_today)):
                r = rng.random()
                if r < p_neg:
                    text = neg[rng.integers(len(neg))]
                elif r < p_neg + 0.2:
                    text = pos[rng.integers(len(pos))]
                else:
                    text = sms[rng.integers(len(sms))]
                when = day_start + timedelta(seconds=float(rng.uniform(7 * 3600, 23 * 3600)))
                rows.append((user, when, text))
    rows.sort(key=lambda r: r[1])
    # One hostile message shows that the report escapes what users write.
    rows.append(("user-001", END - timedelta(hours=30),
                 "<script>alert('x')</script> this product is awful and support ignored me"))
    return pa.table({
        "message_id": pa.array([f"msg-{i + 1:06d}" for i in range(len(rows))], pa.string()),
        "user_id": pa.array([r[0] for r in rows], pa.string()),
        "sent_at": pa.array([r[1] for r in rows], pa.timestamp("us", tz="UTC")),
        "text": pa.array([r[2] for r in rows], pa.string()),
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="screener/demo_data/archive.parquet")
    parser.add_argument("--seed", type=int, default=20261129)
    args = parser.parse_args()
    table = build(args.seed)
    pq.write_table(table, args.out, compression="zstd")
    print(f"wrote {table.num_rows} messages from {len(set(table['user_id'].to_pylist()))} users to {args.out}")


if __name__ == "__main__":
    main()
