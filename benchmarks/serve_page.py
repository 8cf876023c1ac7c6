"""How fast `screener serve` answers for an archive with 5,000 flagged users: the median time of a page request,
first page and a page deep in the list, over several requests to a real `screener serve` subprocess.

The results database is built directly (messages and scores with numpy and SQL, flags by the aggregation's own
statements, decisions by SQL), no model involved. Two completed runs, a day apart, so users have earlier flags; a
share of the flagged users carry decisions, so every state and the decision history show. Usage:

    .venv/bin/python benchmarks/serve_page.py --out benchmarks/results/serve_page.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from screener import aggregate  # noqa: E402
from screener.settings import Settings  # noqa: E402
from screener.store import Source, Store, json_dumps  # noqa: E402

AS_OF = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
MODEL_ID = "benchmark-model"
TOKEN = "benchmark-token-0123456789"


def messages(flagged: int, calm: int, per_user: int, seed: int = 7) -> pa.Table:
    """``per_user`` messages a user over the 30 days before AS_OF: the flagged users write 8 of them in the last week,
    7 negative, and the rest earlier, a third negative; the calm ones spread theirs out, a tenth negative."""
    rng = np.random.default_rng(seed)
    users = flagged + calm
    user = np.repeat(np.arange(users), per_user)
    k = np.tile(np.arange(per_user), users)
    recent = (user < flagged) & (k < 8)
    hours = np.where(recent, rng.uniform(1, 7 * 24 - 1, user.size), rng.uniform(7 * 24 + 1, 30 * 24 - 1, user.size))
    negative = np.where(recent, k < 7, rng.random(user.size) < np.where(user < flagged, 0.33, 0.1))
    sent = [AS_OF - timedelta(hours=float(h)) for h in hours]
    return pa.table({
        "message_id": pa.array([f"m{i:08d}" for i in range(user.size)]),
        "user_id": pa.array([f"user-{u:05d}" for u in user]),
        "sent_at": pa.array(sent, pa.timestamp("us", tz="UTC")),
        "text": pa.array(np.where(negative, "this is awful, nothing works", "all fine, thanks").tolist()),
        "p_negative": pa.array(np.where(negative, 0.9, 0.1).astype(np.float32)),
    })


def build(db: Path, flagged: int, calm: int, per_user: int) -> dict:
    table = messages(flagged, calm, per_user)
    settings = Settings()
    with Store(db, settings) as store:
        store.ensure_schema()
        con = store.con
        con.register("generated", table)
        con.execute("CREATE TABLE messages AS SELECT message_id, user_id, sent_at, text FROM generated")
        con.execute("INSERT INTO screener_scores SELECT message_id, $model, p_negative, "
                    "CASE WHEN p_negative >= 0.5 THEN 'negative' ELSE 'positive' END, $at, 1 FROM generated",
                    {"model": MODEL_ID, "at": AS_OF})
        con.unregister("generated")
        store.attach_source(Source("messages", parquet=False))
        for run_id, as_of in ((1, AS_OF - timedelta(days=1)), (2, AS_OF)):
            store.run("run_insert", {"run_id": run_id, "started_at": as_of, "source": "messages",
                                     "model_name": "benchmark", "model_id": MODEL_ID, "as_of": as_of,
                                     "config": json_dumps(settings.as_dict())})
            aggregate.compute_user_stats(store, settings, MODEL_ID, as_of)
            seen, n_flagged = aggregate.store_flags(store, run_id)
            store.run("run_finish", {"run_id": run_id, "finished_at": as_of, "status": "completed",
                                     "messages_total": table.num_rows, "messages_scored": table.num_rows,
                                     "messages_skipped": 0, "skipped_by_reason": "{}", "users_seen": seen,
                                     "users_flagged": n_flagged, "seconds": 1.0, "error": None})
        # Decisions on every fourth flagged user, after the first run: contacted, snoozed, escalated, false positive.
        con.execute("""
            INSERT INTO screener_decisions (user_id, action, note, reviewer, decided_at, run_id, model_id, flag_share,
                                            snooze_until)
            SELECT user_id, ['contacted', 'snooze', 'escalated', 'false-positive'][1 + (rank // 4) % 4],
                   'left a voicemail, will try again', 'bench', $decided, 1, $model, ratio,
                   CASE WHEN (rank // 4) % 4 = 1 THEN $until END
            FROM screener_flags WHERE run_id = 1 AND rank % 4 = 0
        """, {"decided": AS_OF - timedelta(hours=20), "model": MODEL_ID, "until": AS_OF + timedelta(days=7)})
        counts = dict(con.execute("SELECT run_id, count(*) FROM screener_flags GROUP BY ALL").fetchall())
        n_decisions = con.execute("SELECT count(*) FROM screener_decisions").fetchone()[0]
    return {"messages": table.num_rows, "flagged_run_2": counts.get(2, 0), "flagged_run_1": counts.get(1, 0),
            "decisions": n_decisions}


def get(url: str) -> tuple[float, int]:
    request = urllib.request.Request(url, headers={"X-Screener-Token": TOKEN})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read()
        status = response.status
    seconds = time.perf_counter() - start
    assert status == 200, status
    return seconds, len(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flagged", type=int, default=5000)
    parser.add_argument("--calm", type=int, default=5000)
    parser.add_argument("--per-user", type=int, default=20)
    parser.add_argument("--requests", type=int, default=9)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_page.json"))
    args = parser.parse_args()

    load_before = round(os.getloadavg()[0], 2)  # the machine is shared: other work slows every request
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "results.duckdb"
        started = time.perf_counter()
        shape = build(db, args.flagged, args.calm, args.per_user)
        build_s = time.perf_counter() - started
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SCREENER_SERVE_TOKEN": TOKEN}
        proc = subprocess.Popen([sys.executable, "-m", "screener.cli", "serve", str(db), "--port", "0"], cwd=tmp,
                                env=env, stdout=subprocess.PIPE, text=True)
        try:
            base = proc.stdout.readline().split(" at ")[1].split("?")[0]
            pages = {}
            for name, path in (("first page", ""), ("page 60", "?page=60")):
                get(base + path)  # warm-up: imports, templates, DuckDB's first open
                times, size = [], 0
                for _ in range(args.requests):
                    seconds, size = get(base + path)
                    times.append(seconds)
                pages[name] = {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
                               "max_s": round(max(times), 4), "bytes": size}
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    result = {
        "command": "python benchmarks/serve_page.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "duckdb": duckdb.__version__,
                    "load_average_1min_before_after": [load_before, round(os.getloadavg()[0], 2)]},
        "archive": {**shape, "users": args.flagged + args.calm, "per_user": args.per_user},
        "build_s": round(build_s, 2),
        "page_size": Settings().serve_page_size,
        "requests_per_page": args.requests,
        "pages": pages,
        "target_s": 1.0,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
