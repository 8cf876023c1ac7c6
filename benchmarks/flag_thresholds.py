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
3. For each ``confidence_z``, runs ``user_stats`` once, then every candidate setting of the rule (at least
   ``min_messages`` messages in the 7-day window, a negative share of at least ``min_ratio`` and a Wilson lower
   bound of it of at least ``min_lower_bound``) through the rule's own statement (``rules.evaluate``), and checks
   that it flags the users the same comparison in numpy does; the benchmark stops at the first disagreement.
4. Chooses, on the tuning seeds only and at the shipped ``confidence_z``, the candidate with the highest mean of
   min(precision, recall) over the seeds, ties broken by the lowest such mean among its neighbours (both bars
   within 0.05: a margin against a lucky threshold), then by its worst seed, then by the higher ``min_ratio``; and
   reports it, the previous defaults, the best candidate without a lower bound and the best of each z, on the report
   seeds and on the harder populations, with recall by the number of messages a distressed user wrote in the window.
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
# The settings a candidate sets, and the defaults before this benchmark chose them.
SETTINGS = ("confidence_z", "min_lower_bound", "min_ratio", "min_messages")
PREVIOUS = {"confidence_z": 1.96, "min_lower_bound": 0.0, "min_ratio": 0.6, "min_messages": 5}
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
MIN_RATIOS = (0.0, 0.1, 0.15, 0.2, 0.225, 0.25, 0.275, 0.3, 0.325, 0.35, 0.4, 0.5, 0.6)
MIN_LOWER_BOUNDS = (0.0, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.225, 0.25, 0.3, 0.35)
MIN_MESSAGES = (3, 5, 8, 10, 15, 20)
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
    run of the same model over the same archive, else written afresh. Returns its path, the run id and what the
    scan cost."""
    from screener.classifiers import hf
    from screener.classifiers.registry import load_classifier, read_manifest, resolve_model_dir

    work.mkdir(parents=True, exist_ok=True)
    archive, db = work / "archive.parquet", work / "results.duckdb"
    folder = resolve_model_dir("default")
    current = hf.manifest_model_id(folder, read_manifest(folder))
    if archive.exists() and db.exists() and pq.read_table(archive).equals(table):
        with runs.open_run(db) as run:
            if aggregate.run_record(run.store, run.run_id)["model_id"] == current:
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


def rule_hits(store, c: dict) -> set[str]:
    """The users the rule's own statement matches for candidate ``c``, over the ``screener_user_stats`` of its z."""
    rules.evaluate(store, Settings(**{k: c[k] for k in SETTINGS}))
    return set(store.con.table("screener_rule_hits").select("user_id").to_arrow_table()["user_id"].to_pylist())


def flagged_by(stats: dict, c: dict) -> np.ndarray:
    share = np.nan_to_num(stats["ratio_short"].astype(float), nan=-1.0)
    return ((stats["n_short"] >= c["min_messages"]) & (share >= c["min_ratio"])
            & (stats["wilson_lower"] >= c["min_lower_bound"]))


class Truth:
    """Which archive each row of user_stats belongs to, and whether its user is distressed."""

    def __init__(self, truths: list[dict], users: np.ndarray) -> None:
        self.truths = truths
        where = {t["prefix"]: i for i, t in enumerate(truths)}
        self.archive = np.array([where[u.split("-", 1)[0]] for u in users.tolist()])
        self.distressed = np.isin(users, [u for t in truths for u in t["distressed"]])
        # A user with no message up to as_of has no row in user_stats: never flagged, a miss if distressed.
        self.total_distressed = np.array([len(t["distressed"]) for t in truths])

    def counts(self, flagged: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """True and false positives of each archive."""
        n = len(self.truths)
        tp = np.bincount(self.archive[flagged & self.distressed], minlength=n)
        fp = np.bincount(self.archive[flagged & ~self.distressed], minlength=n)
        return tp, fp

    def per_archive(self, flagged: np.ndarray, which: list[int]) -> list[dict]:
        tp, fp = self.counts(flagged)
        out = []
        for i in which:
            t, f, d = int(tp[i]), int(fp[i]), int(self.total_distressed[i])
            precision = t / (t + f) if t + f else 0.0
            recall = t / d if d else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            out.append({"seed": self.truths[i]["seed"], "users": len(self.truths[i]["users"]), "flagged": t + f,
                        "tp": t, "fp": f, "fn": d - t, "precision": round(precision, 4),
                        "recall": round(recall, 4), "f1": round(f1, 4)})
        return out


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


def recall_by_window(n_short: np.ndarray, flagged: np.ndarray, distressed: np.ndarray) -> list[dict]:
    """Recall of the ``distressed`` rows by how many messages they wrote in the flag window."""
    out = []
    for low, high in WINDOW_BANDS:
        band = distressed & (n_short >= low) & (n_short < high)
        caught = int((band & flagged).sum())
        out.append({"messages_in_window": f"{low}+" if high > 10**8 else f"{low}-{high - 1}",
                    "distressed": int(band.sum()), "flagged": caught,
                    "recall": round(caught / band.sum(), 4) if band.sum() else None})
    return out


def candidates() -> list[dict]:
    """Every setting tried. A lower bound of 0 passes every user, so its candidates need one z only."""
    out = []
    for z in ZS:
        for bound in MIN_LOWER_BOUNDS:
            if bound == 0 and z != SHARE_Z:
                continue
            out += [{"confidence_z": z, "min_lower_bound": bound, "min_ratio": r, "min_messages": m}
                    for r in MIN_RATIOS for m in MIN_MESSAGES]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/flag_thresholds.json")
    parser.add_argument("--work", default="/tmp/screener-flag-thresholds",
                        help="folder for the combined archive and its results database (reused when unchanged)")
    args = parser.parse_args()
    started = time.monotonic()
    texts = Texts.load()
    table, truths = archives(texts)
    db, run_id, cost = scanned(Path(args.work), table)
    grid = candidates()
    with runs.open_run(db, run_id) as run:
        model_id = aggregate.run_record(run.store, run_id)["model_id"]
        stats_by_z = {}
        for z in ZS:
            stats = stats_by_z[z] = user_stats(run.store, model_id, AS_OF, z)
            for c in grid:
                if c["confidence_z"] != z:
                    continue
                c["flagged"] = flagged_by(stats, c)
                sql = rule_hits(run.store, c)
                mine = set(stats["user_id"][c["flagged"]].tolist())
                if sql != mine:
                    raise SystemExit(f"the rule's SQL and the benchmark disagree on {sorted(sql ^ mine)[:5]} for {c}")
    users = stats_by_z[SHARE_Z]["user_id"]
    if any(not np.array_equal(stats["user_id"], users) for stats in stats_by_z.values()):
        raise SystemExit("user_stats gave different users for different z")
    truth = Truth(truths, users)
    tuning = [i for i, t in enumerate(truths) if t["role"] == "tuning"]
    default_report = [i for i, t in enumerate(truths) if t["role"] == "report" and t["population"] == "default"]
    for c in grid:
        c["tuning"] = summary(truth.per_archive(c["flagged"], tuning))
    index = {tuple(c[k] for k in SETTINGS): c for c in grid}
    groups: dict[tuple, list[dict]] = {}
    for c in grid:
        groups.setdefault((c["confidence_z"], c["min_messages"]), []).append(c)
    for c in grid:
        near = [n for n in groups[(c["confidence_z"], c["min_messages"])]
                if abs(n["min_lower_bound"] - c["min_lower_bound"]) <= NEIGHBOURS + 1e-9
                and abs(n["min_ratio"] - c["min_ratio"]) <= NEIGHBOURS + 1e-9]
        c["neighbour_balanced"] = min(n["tuning"]["balanced_mean"] for n in near)
    # Candidates that flag exactly the same users tie; the higher share bar is the one a report reader sees.
    ranked = sorted(grid, key=lambda c: (c["tuning"]["balanced_mean"], c["neighbour_balanced"], c["tuning"]["worst"],
                                         c["min_ratio"]), reverse=True)
    chosen = next(c for c in ranked if c["confidence_z"] == SHARE_Z)
    previous = index[tuple(PREVIOUS[k] for k in SETTINGS)]
    shipped = index[tuple(getattr(Settings(), k) for k in SETTINGS)]
    shown = [next(c for c in ranked if c["min_lower_bound"] == 0)]
    shown += [next(c for c in ranked if c["confidence_z"] == z and c["min_lower_bound"] > 0) for z in ZS]

    def report(c):
        out = {**{k: c[k] for k in SETTINGS}, "tuning": c["tuning"],
               "neighbour_balanced_tuning": c["neighbour_balanced"]}
        out["report"] = truth.per_archive(c["flagged"], default_report)
        out["report_summary"] = summary(out["report"])
        out["harder"] = {name: summary(truth.per_archive(c["flagged"], [i for i, t in enumerate(truths)
                                                                          if t["population"] == name]))
                         for name in HARDER}
        rows = np.isin(truth.archive, default_report)
        out["recall_by_messages_in_window"] = recall_by_window(
            stats_by_z[c["confidence_z"]]["n_short"], c["flagged"], truth.distressed & rows)
        return out

    result = {
        "benchmark": "benchmarks/flag_thresholds.py",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "model": "default", "model_id": model_id, "as_of": AS_OF.isoformat(),
        "scan": cost,
        "seconds": round(time.monotonic() - started, 1),
        "sms_texts": len(texts.sms),
        "populations": {"default": dataclasses.asdict(DEFAULT),
                        **{name: dataclasses.asdict(pop) for name, pop in HARDER.items()}},
        "seeds": {"tuning": list(TUNING_SEEDS), "report": list(REPORT_SEEDS), "harder": list(HARDER_SEEDS)},
        "archives": [{k: t[k] for k in ("population", "seed", "role", "messages")}
                     | {"users": len(t["users"]), "distressed": len(t["distressed"])} for t in truths],
        "grid": {"min_ratio": list(MIN_RATIOS), "min_lower_bound": list(MIN_LOWER_BOUNDS),
                 "min_messages": list(MIN_MESSAGES), "confidence_z": list(ZS)},
        "candidates_checked_against_the_rule_sql": len(grid),
        "selection": ("at the shipped confidence_z, the highest mean over the tuning seeds of min(precision, recall); "
                      f"ties: the lowest such mean of the candidates with both bars within {NEIGHBOURS}, then the "
                      "worst tuning seed, then the higher min_ratio"),
        "chosen": report(chosen),
        "previous_defaults": report(previous),
        "shipped_defaults": report(shipped),
        "best_share_only_and_best_of_each_z": [report(c) for c in shown],
        "all_tuning": [{**{k: c[k] for k in SETTINGS}, **c["tuning"]} for c in grid],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for name in ("chosen", "shipped_defaults", "previous_defaults"):
        r = result[name]
        print(name, {k: r[k] for k in SETTINGS}, "tuning", r["tuning"]["pooled"], "report",
              r["report_summary"]["pooled"])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
