"""Where a three-way model's decision would move under a shift of its class priors, from its probabilities on
SST-2 dev, the hand-labelled development messages and SMS ham (the ``--accuracy-probs`` file of
``benchmarks/device/qwen_paths.sh``, one entry per engine path and set).

Two views:
- a grid of log-prior offsets on negative and neutral (positive fixed at 0), each with SST-2 dev accuracy, the
  development messages' macro-F1 and the share of SMS ham called negative;
- the label-shift correction fitted on the development messages alone (offsets that make the model's mean class
  probabilities equal the hand-labelled class shares), and what it does to the other two sets.

    .venv/bin/python benchmarks/decision_prior.py --probs qwen_paths_probs.npz --path bf16 \\
        --out benchmarks/results/qwen_decision_prior.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from screener.classifiers.base import THREE_WAY_LABELS  # noqa: E402
from training.data import Labelled, load_sst2, read_labelled  # noqa: E402
from training.evaluate import score  # noqa: E402

MESSAGES = ROOT / "training" / "labels" / "messages_dev.tsv"
SST2 = ROOT.parent / "shared" / "data" / "sst2"
NEGATIVE_OFFSETS = (0.0, -0.25, -0.5, -0.75, -1.0, 0.5, 1.0)
NEUTRAL_OFFSETS = (-0.5, 0.0, 0.5, 1.0)


def shifted(probs: np.ndarray, offsets) -> np.ndarray:
    q = probs * np.exp([offsets[0], offsets[1], 0.0])
    return q / q.sum(1, keepdims=True)


def figures(sets: dict, offsets, messages_dev: Labelled, sst2_dev: Labelled) -> dict:
    messages = score(shifted(sets["messages_dev"], offsets), THREE_WAY_LABELS, messages_dev.labels,
                     messages_dev.classes)
    sst2 = score(shifted(sets["sst2_dev"], offsets), THREE_WAY_LABELS, sst2_dev.labels, sst2_dev.classes)
    return {"negative_offset": round(float(offsets[0]), 3), "neutral_offset": round(float(offsets[1]), 3),
            "sst2_dev_accuracy": sst2["accuracy"],
            "messages_dev_macro_f1": messages["macro_f1"],
            "messages_dev_called_negative": messages["called_negative"],
            "sms_ham_called_negative": score(shifted(sets["sms_ham"], offsets), THREE_WAY_LABELS, None)["called_negative"]}


def label_shift(probs: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Offsets whose shifted mean probabilities equal ``shares``: a fixed point of moving each class's log-prior by
    the log ratio of its target share to its current mean (positive held at 0)."""
    offsets = np.zeros(2)
    for _ in range(500):
        mean = shifted(probs, offsets).mean(0)
        step = np.log(shares[:2] / mean[:2]) - np.log(shares[2] / mean[2])
        offsets = offsets + step
        if np.abs(step).max() < 1e-9:
            break
    return offsets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probs", required=True, help="the --accuracy-probs file of qwen_paths.sh")
    parser.add_argument("--path", default="bf16", help="the engine path whose probabilities to read")
    parser.add_argument("--sst2", default=str(SST2), help="the folder with SST-2's dev.tsv")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    store = np.load(args.probs)
    sets = {name: store[f"{args.path}/{name}"] for name in ("sst2_dev", "messages_dev", "sms_ham")}
    messages_dev = read_labelled(MESSAGES).in_classes(THREE_WAY_LABELS)
    sst2_dev = load_sst2("dev", args.sst2)
    shares = np.bincount(messages_dev.labels, minlength=3) / len(messages_dev)
    fitted = label_shift(sets["messages_dev"], shares)
    result = {
        "command": "python benchmarks/decision_prior.py " + " ".join(sys.argv[1:]),
        "path": args.path,
        "messages_dev_shares": dict(zip(THREE_WAY_LABELS, shares.round(4).tolist())),
        "model_mean_shares": dict(zip(THREE_WAY_LABELS, sets["messages_dev"].mean(0).round(4).tolist())),
        "unshifted": figures(sets, (0.0, 0.0), messages_dev, sst2_dev),
        "label_shift_fitted_on_messages_dev": figures(sets, fitted, messages_dev, sst2_dev),
        "grid": [figures(sets, (n, u), messages_dev, sst2_dev) for n in NEGATIVE_OFFSETS for u in NEUTRAL_OFFSETS],
    }
    text = json.dumps(result, indent=1) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
