"""The flag rule's thresholds chosen on data: simulated archives with known distressed users, scanned once with the
default model, then every candidate threshold tried by re-running only the window statistics and the rule SQL.

How to run (from the repository root; ../shared beside the checkout adds SMS texts to the ordinary users):
    .venv/bin/python benchmarks/flag_thresholds.py --out benchmarks/results/flag_thresholds.json

What it does:
1. Builds simulated archives (``training.simulate``): the default population for the tuning seeds and for the
   report seeds, and a few harder populations for the report seeds only; all of them go into one archive, each
   user and message id prefixed with its population and seed.
2. Scans that archive once with the default model through ``screener.scan`` into a results database under
   ``--work``. A text the scan meets again takes the score it got the first time (the classifier scores a text the
   same wherever it appears), so only the few thousand distinct texts go through the model. A later run with the
   same populations and seeds reuses the database; one over other archives scores only texts not met before.
3. For each ``confidence_z``, runs ``user_stats`` once, then compares every candidate: the 7-day negative share, or
   the Wilson lower bound of it, at least ``min_ratio``, with at least ``min_messages`` messages. Candidates that
   compare what the shipped rule compares are also run through the rule's own statement (``rules.evaluate``); the
   benchmark stops if the two disagree on a single user.
4. Chooses, on the tuning seeds only and at the shipped ``confidence_z``, the candidate with the highest mean of
   min(precision, recall) over the seeds, ties broken by the lowest such mean among its neighbours (``min_ratio``
   within 0.05: a margin against a lucky threshold), then by its worst seed; and reports it, the previous defaults
   and the best two of each statistic and z on the report seeds and on the harder populations, with recall by the
   number of messages a distressed user wrote in the window.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from screener import aggregate, rules, runs  # noqa: E402
from screener.scan import scan  # noqa: E402
from screener.settings import Settings  # noqa: E402
from training.distinct import DistinctTexts  # noqa: E402
from training.simulate import END as AS_OF, Population, Texts, build  # noqa: E402

TUNING_SEEDS = tuple(range(101, 121))
REPORT_SEEDS = tuple(range(201, 221))
# The harder populations are drawn with the first of these.
HARDER_SEEDS = REPORT_SEEDS[:5]
# What the shipped rule (sql/rules/high_negative_share.sql) compares with min_ratio.
SHIPPED_STATISTIC = "wilson"
PREVIOUS = {"statistic": "share", "confidence_z": 1.96, "min_ratio": 0.6, "min_messages": 5}
DEFAULT = Population()
# Harder archives than the default one, each changing one thing; scored on the report seeds only.
HARDER = {
    "sparser (median 3 a day)": dataclasses.replace(DEFAULT, rate_median=3.0),
    "sparse (median 2 a day)": dataclasses.replace(DEFAULT, rate_median=2.0),
    "milder distress (50-70% negative)": dataclasses.replace(DEFAULT, distress_negative=(0.5, 0.7)),
    "no rise in distress (same rate)": dataclasses.replace(DEFAULT, distress_rate=1.0),
    "1 distressed in 10 users": dataclasses.replace(DEFAULT, ordinary=270, distressed=30),
    "hand-labelled texts only (no SMS)": dataclasses.replace(DEFAULT, sms_share=0.0),
}
MIN_RATIOS = tuple(round(0.05 + 0.025 * i, 3) for i in range(23))
MIN_MESSAGES = (3, 5, 8, 10, 12, 15, 20)
ZS = (1.0, 1.282, 1.645, 1.96, 2.326)
# The defaults are chosen at the shipped confidence_z only: it also ranks the flagged users and is the bound the
# report shows. The others are reported beside it. The share does not depend on z; its candidates are run with the
# statistics of this one.
SHARE_Z = Settings().confidence_z
NEIGHBOURS = 0.05
WINDOW_BANDS = ((0, 10), (10, 20), (20, 40), (40, 10**9))


def archives(texts: Texts) -> tuple[pa.Table, list[dict]]:
    """One archive of every (population, seed) pair, and for each pair its user prefix and ground truth."""
    parts, truths = [], []
    plan = [("default", DEFAULT, s, "tuning") for s in TUNING_SEEDS]
    plan += [("default", DEFAULT, s, "report") for s in REPORT_SEEDS]
    plan += [(name, pop, s, "report") for name, pop in HARDER.items() for s in HARDER_SEEDS]
    names = {"default": 0, **{name: i + 1 for i, name in enumerate(HARDER)}}
    for name, pop, seed, role in plan:
        prefix = f"p{names[name]}s{seed}"
        sim = build(seed, pop, texts, user_prefix=prefix)
        ids = pa.array([f"{prefix}-{m}" for m in sim.table["message_id"].to_pylist()], pa.string())
        parts.append(sim.table.set_column(0, "message_id", ids))
        truths.append({"population": name, "seed": seed, "role": role, "prefix": prefix,
                       "distressed": sim.distressed, "users": sim.distressed | sim.ordinary,
                       "messages": sim.table.num_rows})
    return pa.concat_tables(parts), truths


def scanned(work: Path, table: pa.Table) -> tuple[Path, int, dict]:
    """The results database of ``table`` scanned with the default model: reused when it already holds a completed
    run over the same archive, else written afresh. Returns its path, the run id and what the scan cost."""
    from screener.classifiers.registry import load_classifier

    work.mkdir(parents=True, exist_ok=True)
    archive, db = work / "archive.parquet", work / "results.duckdb"
    if archive.exists() and db.exists() and pq.read_table(archive).equals(table):
        with runs.open_run(db) as run:
            return db, run.run_id, {"reused": True}
    for stale in (db, db.with_name(db.name + ".wal")):
        stale.unlink(missing_ok=True)
    pq.write_table(table, archive, compression="zstd")
    start = time.monotonic()
    inner = load_classifier("default", device="cpu")
    clf = DistinctTexts(inner, work / f"texts-{inner.model_id}.parquet")
    loaded = time.monotonic()
    try:
        result = scan(db, Settings(), source=str(archive), as_of=AS_OF, classifier=clf, progress=False)
        clf.save()
    finally:
        clf.close()
    return db, result.run_id, {"reused": False, "messages": result.messages_scored, "distinct_texts": clf.scored,
                               "load_s": round(loaded - start, 1), "scan_s": round(time.monotonic() - loaded, 1)}


def user_stats(store, model_id: str, as_of: datetime, z: float) -> dict[str, np.ndarray]:
    aggregate.compute_user_stats(store, Settings(confidence_z=z), model_id, as_of)
    t = (store.con.table("screener_user_stats").select("user_id, n_short, neg_short, ratio_short, wilson_lower")
         .order("user_id").to_arrow_table())
    return {name: t[name].to_numpy(zero_copy_only=False) for name in t.column_names}


def rule_hits(store, z: float, min_ratio: float, min_messages: int) -> set[str]:
    """The users the shipped rule's statement matches, over the ``screener_user_stats`` of ``z`` in place."""
    rules.evaluate(store, Settings(confidence_z=z, min_ratio=min_ratio, min_messages=min_messages))
    return set(store.con.table("screener_rule_hits").select("user_id").to_arrow_table()["user_id"].to_pylist())


def mark(truths: list[dict], users: np.ndarray) -> None:
    """Give each archive's truth its users' places in ``users`` (the rows of user_stats, in user id order)."""
    prefix = np.array([u.split("-", 1)[0] for u in users.tolist()])
    distressed = np.isin(users, [u for t in truths for u in t["distressed"]])
    for t in truths:
        mine = prefix == t["prefix"]
        t["ordinary_rows"], t["distressed_rows"] = mine & ~distressed, mine & distressed


def scores(flagged: np.ndarray, truth: dict) -> dict:
    # A user with no message up to as_of has no row in user_stats: never flagged, and a miss if distressed.
    unseen_distressed = len(truth["distressed"]) - int(truth["distressed_rows"].sum())
    tp = int((flagged & truth["distressed_rows"]).sum())
    fp = int((flagged & truth["ordinary_rows"]).sum())
    fn = len(truth["distressed"]) - tp
    seen = int(truth["distressed_rows"].sum() + truth["ordinary_rows"].sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"users": len(truth["users"]), "seen": seen, "unseen_distressed": unseen_distressed,
            "flagged": tp + fp, "tp": tp, "fp": fp, "fn": fn,
            "precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


def flagged_by(stats: dict, statistic: str, min_ratio: float, min_messages: int) -> np.ndarray:
    value = stats["ratio_short"] if statistic == "share" else stats["wilson_lower"]
    value = np.nan_to_num(value.astype(float), nan=-1.0)
    return (stats["n_short"] >= min_messages) & (value >= min_ratio)


def summary(per_seed: list[dict]) -> dict:
    p = [s["precision"] for s in per_seed]
    r = [s["recall"] for s in per_seed]
    f = [s["f1"] for s in per_seed]
    balanced = [min(a, b) for a, b in zip(p, r)]
    tp, fp, fn = (sum(s[k] for s in per_seed) for k in ("tp", "fp", "fn"))
    return {"balanced_mean": round(float(np.mean(balanced)), 4), "worst": round(min(balanced), 4),
            "pooled": {"flagged": tp + fp, "distressed": tp + fn, "tp": tp,
                       "precision": round(tp / (tp + fp), 4) if tp + fp else 0.0,
                       "recall": round(tp / (tp + fn), 4) if tp + fn else 0.0},
            "precision_mean": round(float(np.mean(p)), 4), "precision_min": round(min(p), 4),
            "recall_mean": round(float(np.mean(r)), 4), "recall_min": round(min(r), 4),
            "f1_mean": round(float(np.mean(f)), 4)}


def recall_by_window(stats: dict, flagged: np.ndarray, truths: list[dict]) -> list[dict]:
    """Recall of the distressed users of ``truths`` by how many messages they wrote in the flag window."""
    users = stats["user_id"]
    distressed = np.isin(users, [u for t in truths for u in t["distressed"]])
    out = []
    for low, high in WINDOW_BANDS:
        band = distressed & (stats["n_short"] >= low) & (stats["n_short"] < high)
        caught = int((band & flagged).sum())
        out.append({"messages_in_window": f"{low}+" if high > 10**8 else f"{low}-{high - 1}",
                    "distressed": int(band.sum()), "flagged": caught,
                    "recall": round(caught / band.sum(), 4) if band.sum() else None})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/flag_thresholds.json")
    parser.add_argument("--work", default="/tmp/screener-flag-thresholds",
                        help="folder for the combined archive and its results database (reused when unchanged)")
    args = parser.parse_args()
    texts = Texts.load()
    table, truths = archives(texts)
    db, run_id, cost = scanned(Path(args.work), table)
    with runs.open_run(db, run_id) as run:
        model_id = aggregate.run_record(run.store, run_id)["model_id"]
        candidates = [{"statistic": "share", "confidence_z": None, "min_ratio": r, "min_messages": m}
                      for r in MIN_RATIOS for m in MIN_MESSAGES]
        candidates += [{"statistic": "wilson", "confidence_z": z, "min_ratio": r, "min_messages": m}
                       for z in ZS for r in MIN_RATIOS for m in MIN_MESSAGES]
        stats_by_z, checked = {}, 0
        for z in ZS:
            stats = stats_by_z[z] = user_stats(run.store, model_id, AS_OF, z)
            for c in candidates:
                if (c["confidence_z"] or SHARE_Z) != z:
                    continue
                c["flagged"] = flagged_by(stats, c["statistic"], c["min_ratio"], c["min_messages"])
                if c["statistic"] == SHIPPED_STATISTIC:
                    sql = rule_hits(run.store, z, c["min_ratio"], c["min_messages"])
                    mine = set(stats["user_id"][c["flagged"]].tolist())
                    if sql != mine:
                        raise SystemExit(f"the rule's SQL and the benchmark disagree on {sorted(sql ^ mine)[:5]} "
                                         f"for {c}")
                    checked += 1
        share_stats = stats_by_z[SHARE_Z]
    users = share_stats["user_id"]
    if any(not np.array_equal(stats["user_id"], users) for stats in stats_by_z.values()):
        raise SystemExit("user_stats gave different users for different z")
    mark(truths, users)
    for c in candidates:
        c["stats"] = stats_by_z[c["confidence_z"] or SHARE_Z]
        c["tuning"] = [scores(c["flagged"], t) for t in truths if t["role"] == "tuning"]
        c["tuning_summary"] = summary(c["tuning"])
    index = {(c["statistic"], c["confidence_z"], c["min_messages"], c["min_ratio"]): c for c in candidates}
    for c in candidates:
        near = [index[(c["statistic"], c["confidence_z"], c["min_messages"], r)] for r in MIN_RATIOS
                if abs(r - c["min_ratio"]) <= NEIGHBOURS + 1e-9]
        c["neighbour_balanced"] = min(n["tuning_summary"]["balanced_mean"] for n in near)
    ranked = sorted(candidates, key=lambda c: (c["tuning_summary"]["balanced_mean"], c["neighbour_balanced"],
                                               c["tuning_summary"]["worst"]), reverse=True)
    chosen = next(c for c in ranked if c["confidence_z"] in (None, SHARE_Z))
    previous = next(c for c in candidates if all(c[k] == v for k, v in PREVIOUS.items() if k != "confidence_z")
                    and c["statistic"] == PREVIOUS["statistic"])
    # The best two of each statistic (and z), for comparison.
    shown = []
    for statistic, z in [("share", None)] + [("wilson", z) for z in ZS]:
        shown += [c for c in ranked if c["statistic"] == statistic and c["confidence_z"] == z][:2]

    def key(c):
        return {k: c[k] for k in ("statistic", "confidence_z", "min_ratio", "min_messages")}

    def report(c):
        out = {**key(c), "tuning": c["tuning_summary"], "neighbour_balanced_tuning": c["neighbour_balanced"]}
        default_report = [t for t in truths if t["role"] == "report" and t["population"] == "default"]
        out["report"] = [scores(c["flagged"], t) | {"seed": t["seed"]} for t in default_report]
        out["report_summary"] = summary(out["report"])
        out["harder"] = {name: summary([scores(c["flagged"], t) for t in truths
                                        if t["role"] == "report" and t["population"] == name]) for name in HARDER}
        out["recall_by_messages_in_window"] = recall_by_window(c["stats"], c["flagged"], default_report)
        return out

    result = {
        "benchmark": "benchmarks/flag_thresholds.py",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "model": "default", "model_id": model_id, "as_of": AS_OF.isoformat(),
        "scan": cost,
        "sms_texts": len(texts.sms),
        "populations": {"default": dataclasses.asdict(DEFAULT),
                        **{name: dataclasses.asdict(pop) for name, pop in HARDER.items()}},
        "seeds": {"tuning": list(TUNING_SEEDS), "report": list(REPORT_SEEDS), "harder": list(HARDER_SEEDS)},
        "archives": [{k: t[k] for k in ("population", "seed", "role", "messages")}
                     | {"users": len(t["users"]), "distressed": len(t["distressed"])} for t in truths],
        "grid": {"min_ratio": list(MIN_RATIOS), "min_messages": list(MIN_MESSAGES), "confidence_z": list(ZS),
                 "statistic": ["share", "wilson"]},
        "rule_sql_checked": checked,
        "selection": ("highest mean over the tuning seeds of min(precision, recall); ties: the lowest such mean of "
                      f"the candidates with min_ratio within {NEIGHBOURS}, then the worst tuning seed"),
        "chosen": report(chosen),
        "previous_defaults": report(previous),
        "best_of_each_statistic": [report(c) for c in shown],
        "all_tuning": [{**key(c), **c["tuning_summary"]} for c in candidates],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for name in ("chosen", "previous_defaults"):
        r = result[name]
        print(name, {k: r[k] for k in ("statistic", "confidence_z", "min_ratio", "min_messages")},
              "tuning", r["tuning"], "report", r["report_summary"])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
