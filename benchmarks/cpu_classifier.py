"""CPU speed and memory of the default classifier, against a naive baseline measured in the same run.

Scores SST-2 dev and the SMS collection three ways with the same loaded model:

- ``baseline``: the usual first attempt, texts in their given order, padded to ``max_length`` (128), fp32;
- ``dynamic_fp32``: the classifier's own path (length-sorted batches padded to their longest text) in fp32;
- ``shipped``: the classifier as ``screener scan`` runs it (dynamic padding, plus bf16 weights where the CPU has
  native bf16).

Prints one JSON object: messages/s for each way and data set, the speed-up over the baseline, the largest score
difference from the baseline (over texts short enough that neither way cuts them), SST-2 dev accuracy of the
shipped path, load time, and the peak RSS of a second process that holds only the shipped model and scores
everything (what ``screener scan`` holds).

    python benchmarks/cpu_classifier.py [--model default] [--data ../shared/data] [--limit N] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def status_mb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    return status_mb("VmRSS")


def peak_rss_mb() -> float:
    # VmHWM belongs to this process image; getrusage's ru_maxrss survives fork+exec and would report the
    # parent's peak in the child.
    return status_mb("VmHWM")


def read_sets(data: Path, limit: int | None) -> dict[str, tuple[list[str], np.ndarray | None]]:
    sets = {}
    sst2 = data / "sst2" / "dev.tsv"
    if sst2.is_file():
        rows = [line.rstrip("\n").split("\t") for line in sst2.read_text(encoding="utf-8").splitlines()[1:]]
        sets["sst2_dev"] = ([r[0] for r in rows], np.array([int(r[1]) for r in rows]))
    sms = data / "sms" / "SMSSpamCollection.tsv"
    if sms.is_file():
        lines = sms.read_text(encoding="utf-8", errors="replace").splitlines()[1:]
        sets["sms"] = ([line.split("\t", 1)[1] for line in lines if "\t" in line], None)
    if not sets:
        raise SystemExit(f"no SST-2 dev or SMS data under {data}")
    if limit:
        sets = {k: (texts[:limit], None if labels is None else labels[:limit]) for k, (texts, labels) in sets.items()}
    return sets


def baseline_scores(model, texts: list[str], batch_size: int = 64) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = model.tokenizer(texts[start: start + batch_size], padding="max_length", truncation=True,
                                  max_length=model.max_length, return_tensors="pt")
            logits = model.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
            out.append(torch.softmax(logits.float(), -1)[:, model.negative_index].numpy())
    return np.concatenate(out)


def timed(fn, texts: list[str]) -> tuple[np.ndarray, float]:
    fn(texts[:64])  # first-call allocations and kernel selection
    start = time.perf_counter()
    scores = fn(texts)
    return scores, len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--limit", type=int, default=None, help="texts per data set (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--shipped-only", action="store_true",
                        help="only load the model and score every set the shipped way, then print peak RSS "
                             "(the main run starts itself this way so that this figure holds one model only)")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sets = read_sets(Path(args.data), args.limit)
    if args.shipped_only:
        shipped_process(args, sets)
        return
    rss_before = rss_mb()
    start = time.perf_counter()
    from screener.classifiers.registry import load_classifier

    model = load_classifier(args.model, device="cpu")
    load_s = time.perf_counter() - start
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    native_bf16 = model.bf16
    from screener.classifiers import hf
    from screener.classifiers.registry import read_manifest, resolve_model_dir

    folder = resolve_model_dir(args.model)
    fp32_model = hf.load(folder, {**read_manifest(folder), "cpu_bf16": False}, device="cpu")
    dynamic_fp32 = fp32_model.predict_negative

    summary = {"model": model.name, "model_id": model.model_id, "threads": torch.get_num_threads(),
               "cpu": platform.processor() or platform.machine(), "bf16_weights": native_bf16,
               "load_s": round(load_s, 2), "rss_after_load_mb": round(rss_mb(), 1),
               "rss_before_load_mb": round(rss_before, 1), "sets": {}}
    for name, (texts, labels) in sets.items():
        lengths = np.asarray(model.token_lengths(texts))
        # The baseline cuts long texts at the end, the classifier keeps head and tail: compare scores only where
        # nothing was cut.
        whole = lengths < model.max_length
        base, base_rate = timed(lambda t: baseline_scores(fp32_model, t), texts)
        dyn, dyn_rate = timed(dynamic_fp32, texts)
        shipped, shipped_rate = timed(model.predict_negative, texts)
        entry = {
            "n": len(texts), "mean_tokens": round(float(np.mean(lengths)), 1), "truncated": int(np.sum(~whole)),
            "msgs_per_s": {"baseline": round(base_rate, 1), "dynamic_fp32": round(dyn_rate, 1),
                           "shipped": round(shipped_rate, 1)},
            "speedup_vs_baseline": {"dynamic_fp32": round(dyn_rate / base_rate, 2),
                                    "shipped": round(shipped_rate / base_rate, 2)},
            "max_abs_diff_vs_baseline_untruncated": {"dynamic_fp32": float(np.max(np.abs(dyn - base)[whole])),
                                                     "shipped": float(np.max(np.abs(shipped - base)[whole]))},
        }
        if labels is not None:
            entry["accuracy"] = {"baseline": float(np.mean((base >= 0.5) == (labels == 0))),
                                 "shipped": float(np.mean((shipped >= 0.5) == (labels == 0)))}
        summary["sets"][name] = entry
    summary["peak_rss_mb_this_process_two_models"] = round(peak_rss_mb(), 1)
    command = [sys.executable, __file__, "--shipped-only", "--model", args.model, "--data", args.data]
    command += ["--limit", str(args.limit)] if args.limit else []
    command += ["--threads", str(args.threads)] if args.threads else []
    probe = subprocess.run(command, capture_output=True, text=True, check=True)
    summary["shipped_process"] = json.loads(probe.stdout)
    print(json.dumps(summary, indent=2))


def shipped_process(args, sets) -> None:
    """What ``screener scan`` holds: one model, every text scored the shipped way."""
    from screener.classifiers.registry import load_classifier

    model = load_classifier(args.model, device="cpu")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    n = 0
    for texts, _ in sets.values():
        model.predict_negative(texts)
        n += len(texts)
    print(json.dumps({"msgs": n, "msgs_per_s": round(n / (time.perf_counter() - start), 1),
                      "peak_rss_mb": round(peak_rss_mb(), 1)}))


if __name__ == "__main__":
    main()
