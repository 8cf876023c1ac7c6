"""End-to-end `screener scan` speed and memory, and aggregation + report time at scale.

How to run (from the repository root, ../shared beside it for real message texts):
    .venv/bin/python benchmarks/scan_e2e.py --messages 100000 --big 1000000 --out benchmarks/results/scan_e2e.json

What it measures, all in one run on this machine:
1. `screener scan` of an N-message archive with the default model, as a subprocess: messages/s and peak RSS
   (the child's ru_maxrss). Baseline in the same run: the default classifier alone over the same texts
   (length-sorted batches, no DuckDB), so the ratio shows what the pipeline around the model costs.
2. Memory flatness: the same scan with a tiny random-weight model (same code path, negligible model cost) on
   N and on BIG messages; the ratio of peak RSS BIG/N should stay near 1.
3. Aggregation, flags and report for BIG messages from 50k users with scores in place: seconds.
4. (``--parts default_big``) the default model's scan of BIG messages: its peak RSS beside the N-message scan's.

For the load figures of a 10M-message archive: ``--parts memory,aggregation --messages 1000000 --big 10000000``.

The CPU backends, torch against ONNX Runtime, in one run (``--parts backends``; ``--cpu-model`` names the model):
5. `screener scan` of the same N-message archive (a fresh copy each time) with ``--backend torch``, ``onnx-fp32``
   and ``onnx-int8``, alternating for ``--rounds`` rounds, each a subprocess: messages/s end to end and that
   child's own peak RSS; beside each, the classifier alone over the same texts (batches as the scan makes them, no
   DuckDB), in a child of its own. Every timing carries the 1-minute load average before and after it. The ONNX exports are built before any timing (a one-time cost, reported apart).
   Ratios are against torch in the same round; the summary holds their medians.
6. (``--parts backends_memory``) memory flatness of the ONNX default: `screener scan --backend onnx` of N and of
   BIG messages, peak RSS BIG/N.

    .venv/bin/python benchmarks/scan_e2e.py --parts backends --messages 20000 --rounds 1 \
        --out benchmarks/results/scan_e2e_onnx.json
    .venv/bin/python benchmarks/scan_e2e.py --parts backends_memory --messages 100000 --big 1000000 \
        --out benchmarks/results/scan_e2e_onnx_memory.json

On a GPU (``--parts gpu --model MODEL --device cuda:0``; ``--device cuda`` uses every visible GPU): the scan of an
N-message archive in this process with the model loaded beforehand, beside the same classifier alone over the same
texts in calls of the scan's window size, both after a warm-up on other texts. The ratio is what reading,
committing and aggregating cost around the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

AS_OF = datetime(2026, 3, 1, tzinfo=timezone.utc)


def message_texts() -> list[str]:
    shared = ROOT.parent / "shared" / "data"
    texts: list[str] = []
    if (shared / "sms" / "SMSSpamCollection.tsv").exists():
        for line in (shared / "sms" / "SMSSpamCollection.tsv").read_text(encoding="utf-8").splitlines()[1:]:
            texts.append(line.split("\t", 1)[1])
        for line in (shared / "sst2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]:
            texts.append(line.split("\t")[0])
    else:
        import pyarrow.parquet as pq

        texts = pq.read_table(ROOT / "screener" / "demo_data" / "archive.parquet")["text"].to_pylist()
    return texts


def build_archive(path: Path, n: int, n_users: int, texts: list[str], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    con = duckdb.connect(str(path))
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE TABLE messages (message_id VARCHAR, user_id VARCHAR, sent_at TIMESTAMPTZ, text VARCHAR)")
    chunk = 200_000
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        table = pa.table({
            "message_id": pa.array([f"m{i:09d}" for i in range(start, start + m)]),
            "user_id": pa.array([f"u{u:06d}" for u in rng.integers(0, n_users, m)]),
            "sent_at": pa.array(int(AS_OF.timestamp() * 1e6) - (rng.uniform(0, 90 * 86400, m) * 1e6).astype(np.int64),
                                pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "text": pa.array([texts[i] for i in rng.integers(0, len(texts), m)]),
        })
        con.register("chunk", table)
        con.execute("INSERT INTO messages SELECT * FROM chunk")
        con.unregister("chunk")
    con.close()


def timed_scan(db: Path, model: str) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "screener.cli", "-q", "scan", str(db), "--model", model,
                           "--as-of", AS_OF.isoformat(), "--json", "--no-progress"],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    summary = json.loads(proc.stdout)
    return {"model": model, "messages": summary["messages_scored"], "wall_s": round(wall, 2),
            "scan_s": summary["seconds"], "msgs_per_s": round(summary["messages_scored"] / wall, 1),
            # ru_maxrss of children is the largest child so far; runs go smallest first so this is this run's.
            "peak_rss_mb": round(max(peak, before) / 1024, 1)}


def classifier_alone(texts: list[str], model: str = "default", backend: str = "torch", clf=None) -> dict:
    """The classifier over ``texts`` in windows of 4096 and batches of 64, as the scan calls it, without DuckDB."""
    from screener.batching import predict_proba
    from screener.classifiers.registry import load_classifier

    clf = clf or load_classifier(model, device="cpu", backend=backend)
    predict_proba(clf, texts[:256], 64)
    start = time.perf_counter()
    for i in range(0, len(texts), 4096):
        predict_proba(clf, texts[i:i + 4096], 64)
    seconds = time.perf_counter() - start
    return {"messages": len(texts), "seconds": round(seconds, 2), "msgs_per_s": round(len(texts) / seconds, 1)}


def scan_child(db: Path, model: str, backend: str) -> dict:
    """`screener scan` as a subprocess: messages/s end to end and the child's own peak RSS (os.wait4 reaps it
    with its resource usage, which RUSAGE_CHILDREN would mix with earlier children's)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        load_before = load_average()
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "screener.cli", "-q", "scan", str(db), "--model", model,
                                 "--backend", backend, "--as-of", AS_OF.isoformat(), "--json", "--no-progress"],
                                stdout=out, stderr=err, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"scan --backend {backend} exited with {proc.returncode}: {err.read()}")
        summary = json.loads(out.read())
    return {"backend": backend, "messages": summary["messages_scored"], "wall_s": round(wall, 2),
            "scan_s": summary["seconds"], "msgs_per_s": round(summary["messages_scored"] / wall, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "load_average": [load_before, load_average()]}


def load_average() -> float:
    """The 1-minute load average (this benchmark's own threads included): the machine is shared, so every timing
    carries the load it ran under."""
    return round(os.getloadavg()[0], 2)


CPU_BACKENDS = ("torch", "onnx-fp32", "onnx-int8")


def sample_texts(texts: list[str], n: int) -> list[str]:
    return [texts[i] for i in np.random.default_rng(8).integers(0, len(texts), min(n, 20_000))]


def child_json(args: list[str]) -> dict:
    """This script run as a child with ``args``: its one line of JSON. Every timed run is a fresh process, and this
    one stays small, because a child forked from a large process starts with that process's peak RSS."""
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited with {proc.returncode}: {proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def alone_child(model: str, backend: str, n: int) -> None:
    """(As a child) load the classifier, then time it alone over the benchmark's sample texts."""
    from screener.classifiers.registry import load_classifier

    start = time.perf_counter()
    clf = load_classifier(model, device="cpu", backend=backend)
    load_s = time.perf_counter() - start
    load_before = load_average()
    result = classifier_alone(sample_texts(message_texts(), n), clf=clf)
    print(json.dumps({**result, "load_s": round(load_s, 2), "model_id": clf.model_id,
                      "backend": getattr(clf, "backend", backend),
                      "load_average": [load_before, load_average()]}))


def backends(tmp: Path, texts: list[str], n: int, model: str, rounds: int) -> dict:
    """Torch and the ONNX backends on one archive, alternating; ratios against torch within each round."""
    start_load = load_average()
    archive = tmp / "backends.duckdb"
    build_archive(archive, n, max(n // 20, 1), texts, seed=7)
    # The ONNX exports are built once, before any timing; a scan's first run pays this once per model.
    exports = {backend: child_json(["--alone-child", backend, "--cpu-model", model, "--messages", "256"])["load_s"]
               for backend in CPU_BACKENDS[1:]}
    runs = []
    for r in range(rounds):
        order = CPU_BACKENDS if r % 2 == 0 else CPU_BACKENDS[::-1]
        row: dict = {"round": r + 1, "order": list(order)}
        for backend in order:
            copy = tmp / f"scan-{backend}-{r}.duckdb"
            shutil.copyfile(archive, copy)
            row[backend] = {"scan": scan_child(copy, model, backend),
                            "classifier_alone": child_json(["--alone-child", backend, "--cpu-model", model,
                                                            "--messages", str(n)])}
            copy.unlink()
        for backend in CPU_BACKENDS[1:]:
            row[f"{backend}_over_torch"] = {
                "scan": round(row[backend]["scan"]["msgs_per_s"] / row["torch"]["scan"]["msgs_per_s"], 3),
                "classifier_alone": round(row[backend]["classifier_alone"]["msgs_per_s"]
                                          / row["torch"]["classifier_alone"]["msgs_per_s"], 3)}
        runs.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    summary = {f"{backend}_over_torch_median": {
        kind: round(statistics.median(row[f"{backend}_over_torch"][kind] for row in runs), 3)
        for kind in ("scan", "classifier_alone")} for backend in CPU_BACKENDS[1:]}
    for backend in CPU_BACKENDS:
        summary[f"{backend}_scan_msgs_per_s_median"] = statistics.median(row[backend]["scan"]["msgs_per_s"]
                                                                         for row in runs)
        summary[f"{backend}_classifier_alone_msgs_per_s_median"] = statistics.median(
            row[backend]["classifier_alone"]["msgs_per_s"] for row in runs)
        summary[f"{backend}_peak_rss_mb_max"] = max(row[backend]["scan"]["peak_rss_mb"] for row in runs)
    return {"model": model, "messages": n, "load_average_at_start": start_load, "rounds": runs,
            "export_load_s": exports,
            "model_ids": {b: runs[0][b]["classifier_alone"]["model_id"] for b in CPU_BACKENDS}, "summary": summary}


def backends_memory(tmp: Path, texts: list[str], n: int, big: int, model: str) -> dict:
    """Peak RSS of the ONNX default's scan on N and on BIG messages."""
    small_db, big_db = tmp / "onnx_small.duckdb", tmp / "onnx_big.duckdb"
    build_archive(small_db, n, max(n // 20, 1), texts, seed=9)
    build_archive(big_db, big, max(big // 20, 1), texts, seed=10)
    small = scan_child(small_db, model, "onnx")
    large = scan_child(big_db, model, "onnx")
    return {"model": model, "small": small, "big": large,
            "rss_ratio_big_over_small": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3)}


def gpu_scan(db: Path, texts: list[str], n: int, n_users: int, model: str, device: str) -> dict:
    import torch

    from screener.classifiers.registry import load_classifier
    from screener.scan import scan
    from screener.settings import Settings

    def sync() -> None:
        for i in range(torch.cuda.device_count()):
            torch.cuda.synchronize(i)

    start = time.perf_counter()
    clf = load_classifier(model, device=device)
    load_s = time.perf_counter() - start
    rng = np.random.default_rng(5)
    start = time.perf_counter()
    clf.predict_negative([texts[i] for i in rng.integers(0, len(texts), min(n, 20_000))])
    warmup_s = time.perf_counter() - start  # kernel plans and compiled graphs: what a scan's first window pays
    build_archive(db, n, n_users, texts, seed=6)
    settings = Settings(model=model, device=device)
    sync()
    start = time.perf_counter()
    result = scan(db, settings, as_of=AS_OF, classifier=clf, progress=False)
    sync()
    scan_s = time.perf_counter() - start
    con = duckdb.connect(str(db), read_only=True)
    scanned = con.sql("SELECT text FROM messages WHERE text IS NOT NULL AND trim(text) <> ''").fetchall()
    con.close()
    scanned = [row[0] for row in scanned]
    window = max(settings.window_rows, clf.min_window_rows)
    sync()
    start = time.perf_counter()
    for i in range(0, len(scanned), window):
        clf.predict_negative(scanned[i:i + window])
    sync()
    alone_s = time.perf_counter() - start
    return {"model": model, "device": device, "gpus": len(getattr(clf, "devices", [device])),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none", "messages": result.messages_scored, "window_rows": window,
            "model_load_s": round(load_s, 2), "warmup_s": round(warmup_s, 2), "scan_s": round(scan_s, 2),
            "scan_msgs_per_s": round(result.messages_scored / scan_s, 1),
            "classifier_alone_msgs_per_s": round(len(scanned) / alone_s, 1),
            "pipeline_efficiency": round(alone_s / scan_s, 3), "users": result.users,
            "users_flagged": result.users_flagged}


def aggregation_time(db: Path, n_users: int) -> dict:
    """Scores for every message under a synthetic model id, then the scan's aggregation and the report."""
    from screener import aggregate, report
    from screener.settings import Settings
    from screener.store import Source, Store

    model_id = "bench-synthetic"
    con = duckdb.connect(str(db))
    con.execute(
        "INSERT INTO screener_scores BY NAME SELECT message_id, $m AS model_id, random()::FLOAT AS p_negative, "
        "'x' AS label, now() AS scored_at, 0 AS run_id FROM messages", {"m": model_id})
    con.close()
    settings = Settings()
    with Store(db, settings) as store:
        store.attach_source(Source("messages", parquet=False))
        start = time.perf_counter()
        aggregate.compute_user_stats(store, settings, model_id, AS_OF)
        store.con.execute(
            "INSERT INTO screener_runs (run_id, started_at, status, source, model_name, model_id, as_of, config) "
            "VALUES (999, now(), 'completed', 'messages', 'bench', $m, $a, $c)",
            {"m": model_id, "a": AS_OF, "c": json.dumps(settings.as_dict())})
        seen, flagged = aggregate.store_flags(store, 999)
        t_agg = time.perf_counter() - start
        data = aggregate.report_data(store, 999)
        html = report.render(data, "html")
        total = time.perf_counter() - start
    return {"users_seen": seen, "users_flagged": flagged, "aggregation_s": round(t_agg, 2),
            "aggregation_and_report_s": round(total, 2), "report_mb": round(len(html) / 1e6, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--parts", default="memory,aggregation,default",
                        help="comma-separated subset of memory, aggregation, default, default_big, gpu, "
                             "backends, backends_memory")
    parser.add_argument("--model", default="smollm2-sst2", help="the model of --parts gpu")
    parser.add_argument("--device", default="cuda:0", help="the device of --parts gpu")
    parser.add_argument("--cpu-model", default="default", help="the model of --parts backends, backends_memory")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of --parts backends")
    parser.add_argument("--alone-child", metavar="BACKEND", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.alone_child:
        alone_child(args.cpu_model, args.alone_child, args.messages)
        return
    parts = set(args.parts.split(","))

    texts = message_texts()
    out: dict = {"machine": {"cpus": os.cpu_count()}, "command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "memory" in parts:
            from conftest import build_tiny_model

            tiny = build_tiny_model(tmp / "tiny")
        small, big = tmp / "small.duckdb", tmp / "big.duckdb"
        if parts & {"memory", "aggregation"}:
            build_archive(big, args.big, args.users, texts, seed=1)
        if "memory" in parts:
            build_archive(small, args.messages, max(args.messages // 20, 1), texts)
            out["tiny_small"] = timed_scan(small, str(tiny))
            out["tiny_big"] = timed_scan(big, str(tiny))
            out["rss_ratio_big_over_small"] = round(out["tiny_big"]["peak_rss_mb"]
                                                    / out["tiny_small"]["peak_rss_mb"], 3)
        if "aggregation" in parts:
            if "memory" not in parts:
                from screener.settings import Settings
                from screener.store import Store

                with Store(big, Settings()) as store:
                    store.ensure_schema()
            out["aggregation_big"] = aggregation_time(big, args.users)
        if "default" in parts:
            default_db = tmp / "default.duckdb"
            build_archive(default_db, args.messages, max(args.messages // 20, 1), texts, seed=2)
            sample = [texts[i] for i in np.random.default_rng(3).integers(0, len(texts), min(args.messages, 20_000))]
            out["default_classifier_alone"] = classifier_alone(sample)
            out["default_scan"] = timed_scan(default_db, "default")
            out["pipeline_efficiency"] = round(out["default_scan"]["msgs_per_s"]
                                               / out["default_classifier_alone"]["msgs_per_s"], 3)
        if "default_big" in parts:
            # The default model's peak RSS on BIG messages, beside its peak on N above (run both parts together).
            big_default = tmp / "default_big.duckdb"
            build_archive(big_default, args.big, args.users, texts, seed=4)
            out["default_scan_big"] = timed_scan(big_default, "default")
            if "default_scan" in out:
                out["default_rss_ratio_big_over_small"] = round(out["default_scan_big"]["peak_rss_mb"]
                                                                / out["default_scan"]["peak_rss_mb"], 3)
        if "backends" in parts:
            out["backends"] = backends(tmp, texts, args.messages, args.cpu_model, args.rounds)
        if "backends_memory" in parts:
            out["backends_memory"] = backends_memory(tmp, texts, args.messages, args.big, args.cpu_model)
        if "gpu" in parts:
            out["gpu_scan"] = gpu_scan(tmp / "gpu.duckdb", texts, args.messages, max(args.messages // 20, 1),
                                       args.model, args.device)
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
