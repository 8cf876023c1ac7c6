"""The Ray engine against the local engine, same archive, same model, same machine, one run.

How to run (from the repository root, with `pip install -e '.[ray]'`):
    .venv/bin/python benchmarks/ray_scan.py --messages 4000 --out benchmarks/results/ray_scan.json

What it measures: wall time of a full scan (scoring, load, aggregation, flags) of an N-message archive with the
default model on CPU, for the local engine (the baseline: one process, torch on all cores) and for the Ray engine
on a local Ray instance with 1 and with 2 classifier actors (one core and one torch thread each). Reported as
messages/s and the ratio to the baseline. Ray start-up is outside the timed part (a cluster is already running
when a nightly scan joins it); the actors' model loading is inside it. Each run's scores are compared with the
baseline's: the largest difference in P(negative) and the number of labels that differ (the Ray workers batch by a
token budget, the local engine by a row count, and on CPUs with native bf16 the default model's scores move with
the padding of the batch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from scan_e2e import AS_OF, build_archive, message_texts  # noqa: E402

from screener.ray_engine import RayOptions, scan_ray  # noqa: E402


def scores(db: Path) -> dict[str, tuple[float, str]]:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return {m: (p, label) for m, p, label in
                con.execute("SELECT message_id, p_negative, label FROM screener_scores").fetchall()}
    finally:
        con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray instance")
    parser.add_argument("--model", default=None, help="model name or folder (default: the default model)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: the baseline is the local engine on one GPU and each actor holds one GPU")
    parser.add_argument("--workers", default="1,2", help="actor counts to measure, comma separated")
    parser.add_argument("--rows-per-task", type=int, default=RayOptions.rows_per_task)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import ray

    from screener.scan import scan
    from screener.settings import Settings

    model = {"model": args.model} if args.model else {}
    settings = Settings(device=args.device, **model)
    # The local baseline runs on one device: "cuda" alone would spread it over every GPU of the host.
    # On a GPU the engine gets whole windows; a larger window keeps it busy (32k rows per transaction).
    local_settings = (Settings(device="cuda:0", window_rows=32768, **model) if args.device == "cuda"
                      else Settings(device="cpu", **model))
    gpus = 0
    if args.device == "cuda":
        import torch

        gpus = torch.cuda.device_count()
    figures: dict = {"messages": args.messages, "model": settings.model, "machine": platform.machine(),
                     "cores": os.cpu_count(), "device": args.device, "gpus": gpus,
                     "command": "python " + " ".join(sys.argv), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "archive.duckdb"
        build_archive(base, args.messages, args.users, message_texts())
        db = Path(tmp) / "local.duckdb"
        shutil.copy(base, db)
        t0 = time.perf_counter()
        scan(db, local_settings, as_of=AS_OF, progress=False)
        baseline = time.perf_counter() - t0
        want = scores(db)
        figures["runs"]["local"] = {"seconds": round(baseline, 2), "messages_per_s": round(args.messages / baseline, 1),
                                    "ratio_to_local": 1.0}
        ray.init(num_cpus=args.cpus, num_gpus=gpus, include_dashboard=False, log_to_driver=False)
        try:
            for workers in [int(w) for w in args.workers.split(",")]:
                db = Path(tmp) / f"ray{workers}.duckdb"
                shutil.copy(base, db)
                t0 = time.perf_counter()
                options = RayOptions(workers=workers, rows_per_task=args.rows_per_task)
                scan_ray(db, settings, as_of=AS_OF, progress=False, options=options)
                seconds = time.perf_counter() - t0
                got = scores(db)
                assert got.keys() == want.keys()
                diff = float(np.max(np.abs([got[k][0] - want[k][0] for k in want]))) if want else 0.0
                labels_differing = sum(got[k][1] != want[k][1] for k in want)
                figures["runs"][f"ray_{workers}_{args.device}_actors"] = {
                    "seconds": round(seconds, 2), "messages_per_s": round(args.messages / seconds, 1),
                    "ratio_to_local": round(baseline / seconds, 2), "max_abs_score_diff": round(diff, 5),
                    "labels_differing": labels_differing}
                print(f"ray {workers} actors: {seconds:.1f}s", flush=True)
        finally:
            ray.shutdown()
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
