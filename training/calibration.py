"""The calibration texts an encoder model ships for its smoothed int8 form (``screener.classifiers.onnx_int8``).

How to run (from the repository root, ../shared beside it for SST-2 train):
    .venv/bin/python -m training.calibration screener/models/default

Writes ``onnx_calibration.txt`` into the model folder, one text a line: a fixed sample of SST-2 train sentences and
of the hand-labelled training messages (``training/labels/messages_train.tsv``, already cleaned: no user names),
none of them a development text, so no figure reported on a development set was calibrated on. Then set
``onnx_smoothing`` and ``onnx_calibration`` in the folder's ``screener_model.json``. The calibration measures only
each hidden channel's range; it teaches the model nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from training import data

FILE = "onnx_calibration.txt"
SIZES = {"sst2_train": 1000, "messages_train": 1000}
SEED = 7


def calibration_texts(data_dir: Path, messages: Path, exclude: list[Path]) -> list[str]:
    blocked = data.excluded_keys(exclude)
    rng = np.random.default_rng(SEED)
    picked: list[str] = []
    for name, rows in (("sst2_train", data.load_sst2("train", data_dir)), ("messages_train",
                                                                         data.load_three_way(messages))):
        texts = sorted({data.SPACE.sub(" ", t).strip() for t in rows.texts} - {""})
        texts = [t for t in texts if data.text_key(t) not in blocked]
        picked += [texts[i] for i in sorted(rng.choice(len(texts), SIZES[name], replace=False))]
    return picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/sst2"))
    parser.add_argument("--messages", type=Path, default=Path("training/labels/messages_train.tsv"))
    parser.add_argument("--exclude", type=Path, nargs="*", default=[Path("training/labels/messages_dev.tsv")])
    args = parser.parse_args()
    texts = calibration_texts(args.data, args.messages, args.exclude)
    (args.model_dir / FILE).write_text("\n".join(texts) + "\n", encoding="utf-8")
    print(f"wrote {len(texts)} texts to {args.model_dir / FILE}")


if __name__ == "__main__":
    main()
