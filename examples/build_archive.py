"""Build the example archive that `screener demo` scans: four weeks of real messages from simulated users.

How to run (from the repository root):
    python examples/build_archive.py --out screener/demo_data/archive.parquet
    python examples/build_archive.py --ordinary 240 --distressed 60 --out /tmp/archive.parquet   (a larger one)

Texts are real messages hand-labelled negative, neutral or positive by the team
(training/labels/messages_dev.tsv: SMS from the UCI SMS Spam Collection, Almeida & Hidalgo, 2011, CC BY 4.0, and
posts from the Sentiment140 training set, Go, Bhayani & Huang, 2009, with @handles and links masked). It is the
development set, never trained on, so a model is not shown texts it learnt. Users, times and who turns
negative are simulated with a fixed seed by training/simulate.py, with only the committed texts (no SMS file):
- ordinary users write a few messages a day, mostly neutral and positive ones and a negative one now and then;
- distressed users write like ordinary users, then in the last 7 days twice as often and mostly (80-90%)
  negative messages.
The returned table has the archive's columns; `build` also returns which users are distressed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.simulate import Population, Texts, build as simulate  # noqa: E402

SEED = 20261201
DEMO = Population(ordinary=48, distressed=10, days=28, rate_median=3.2, rate_sigma=0.3, activity=(0.7, 1.0),
                  distress_rate=2.0, distress_negative=(0.8, 0.9), ordinary_mix=(0.05, 0.65, 0.30), sms_share=0.0)


def build(seed: int = SEED, n_ordinary: int = DEMO.ordinary, n_distressed: int = DEMO.distressed
          ) -> tuple[pa.Table, set[str]]:
    population = dataclasses.replace(DEMO, ordinary=n_ordinary, distressed=n_distressed)
    sim = simulate(seed, population, Texts.load(sms=None))
    return sim.table, set(sim.distressed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="screener/demo_data/archive.parquet")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--ordinary", type=int, default=DEMO.ordinary)
    parser.add_argument("--distressed", type=int, default=DEMO.distressed)
    args = parser.parse_args()
    table, distressed = build(args.seed, args.ordinary, args.distressed)
    pq.write_table(table, args.out, compression="zstd")
    print(f"wrote {table.num_rows} messages from {len(set(table['user_id'].to_pylist()))} users "
          f"({len(distressed)} distressed: {', '.join(sorted(distressed))}) to {args.out}")


if __name__ == "__main__":
    main()
