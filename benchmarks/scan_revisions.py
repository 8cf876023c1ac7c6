"""`screener scan` end to end from two source trees on the same archive, alternating, in one run.

How to run (from the repository root; BASELINE is another checkout of screener, e.g. a `git worktree` of an older
commit, with ``sql/`` reachable as ``screener/sql`` or beside the package):
    .venv/bin/python benchmarks/scan_revisions.py --baseline BASELINE --messages 20000 --rounds 3 \
        --out benchmarks/results/scan_revisions.json

Each round scans a fresh copy of one archive with the default model on CPU, once per tree, in alternating order,
so both trees see the same machine load. Reported: messages/s per scan, the median per tree, and the ratio of
the medians (this tree over the baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from scan_e2e import AS_OF, build_archive, message_texts  # noqa: E402


def git_head(tree: Path) -> str:
    return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def scan_once(tree: Path, db: Path, model: str) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "screener.cli", "-q", "scan", str(db), "--model", model,
                           "--as-of", AS_OF.isoformat(), "--json", "--no-progress"],
                          capture_output=True, text=True, env=env, cwd=tree)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"scan from {tree} failed:\n{proc.stderr}")
    return json.loads(proc.stdout)["messages_scored"] / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="default")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    trees = {"current": ROOT, "baseline": args.baseline.resolve()}
    rates: dict[str, list[float]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "archive.duckdb"
        build_archive(archive, args.messages, args.users, message_texts(), seed=11)
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for name in order:
                db = Path(tmp) / f"{name}-{r}.duckdb"
                shutil.copy(archive, db)
                rates[name].append(round(scan_once(trees[name], db, args.model), 1))
                db.unlink()
                print(f"round {r + 1} {name}: {rates[name][-1]} msg/s", file=sys.stderr)
    medians = {name: statistics.median(v) for name, v in rates.items()}
    result = {
        "command": " ".join(["benchmarks/scan_revisions.py", *sys.argv[1:]]),
        "messages": args.messages, "model": args.model, "cpu_count": os.cpu_count(),
        "commits": {name: git_head(tree) for name, tree in trees.items()},
        "msgs_per_s": rates, "median_msgs_per_s": medians,
        "ratio_current_over_baseline": round(medians["current"] / medians["baseline"], 3),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
