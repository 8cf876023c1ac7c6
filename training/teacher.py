"""Teacher labelling: a trained classifier's class probabilities on SST-2 train and the unlabelled message texts,
as the file ``training.distill`` reads (columns ``text``, ``source``, ``p_negative``, ``p_neutral``,
``p_positive``; ``source`` is ``sst2``, ``sms``, ``sentiment140`` or ``augmented``).

    python -m training.teacher --model MODEL_DIR --out teacher.parquet --device cuda

Any classifier with ``labels`` and ``predict_proba`` will do (``screener.classifiers.registry.load_classifier``
loads it); a two-class model's neutral is 0. The message texts are ``training.data.unlabelled_messages``: every
SMS and Sentiment140 text, cleaned, each once, none of the development set's. ``--sst2-fraction`` and ``--seed``
pick the same share of SST-2 train that a recipe with those ``sst2_fraction`` and ``seed`` trains on.
``--augment N`` adds up to N perturbed variants of every text (``training.augment``; source ``augmented``), none
of them a development text of SST-2 or of the ``--exclude`` files; ``--augment-base`` names the encoder whose
word embeddings give the replacement words.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from screener.classifiers.base import THREE_WAY_LABELS
from training.augment import SOURCE as AUGMENTED
from training.augment import Augmentation, augment, embedding_neighbours
from training.data import (MESSAGES_DEV, SENTIMENT140_FILE, SMS_FILE, SST2_DIR, Unlabelled, excluded_keys, load_sst2,
                           subsample, text_key, unlabelled_messages)

log = logging.getLogger(__name__)
CHUNK = 8192


def teacher_texts(sst2_dir: str | Path | None, sms: str | Path | None, sentiment140: str | Path | None,
                  exclude: Sequence[str | Path], sst2_fraction: float = 1.0, seed: int = 42,
                  limit: int | None = None) -> Unlabelled:
    """SST-2 train's share, then the unlabelled message texts (at most ``limit`` of each source group)."""
    texts, sources = [], []
    if sst2_dir is not None:
        sst2 = subsample(load_sst2("train", sst2_dir), sst2_fraction, seed).texts[:limit]
        texts += sst2
        sources += ["sst2"] * len(sst2)
    messages = unlabelled_messages(sms, sentiment140, exclude)
    texts += messages.texts[:limit]
    sources += messages.sources[:limit]
    return Unlabelled(texts, sources)


def with_variants(data: Unlabelled, aug: Augmentation, base: str | None, sst2_dir: str | Path | None,
                  exclude: Sequence[str | Path]) -> Unlabelled:
    """``data`` followed by its augmented variants; none is a development text (SST-2 dev where ``sst2_dir`` has
    it, and the ``exclude`` files' texts)."""
    blocked = excluded_keys(exclude)
    if sst2_dir is not None:
        try:
            blocked |= {text_key(t) for t in load_sst2("dev", sst2_dir).texts}
        except FileNotFoundError:
            pass
    neighbours = {}
    if base is not None:
        from screener.classifiers import hf

        neighbours = embedding_neighbours(hf.resolve_base(base, Path.cwd()),
                                          {w for t in data.texts for w in t.split()})
    variants = augment(data.texts, aug, neighbours, blocked)
    log.info("augment: %d variants of %d texts (%d words with neighbours)", len(variants), len(data.texts),
             len(neighbours))
    return Unlabelled(data.texts + variants, data.sources + [AUGMENTED] * len(variants))


def three_way_columns(probs: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """A model's probabilities over its ``labels`` as (n, 3) over ``THREE_WAY_LABELS``; a class the model lacks
    gets 0."""
    unknown = [c for c in labels if c not in THREE_WAY_LABELS]
    if unknown:
        raise ValueError(f"the model's classes {list(labels)} are not among {', '.join(THREE_WAY_LABELS)}")
    out = np.zeros((len(probs), len(THREE_WAY_LABELS)), dtype=np.float32)
    out[:, [THREE_WAY_LABELS.index(c) for c in labels]] = probs
    return out


def label_texts(classifier, texts: Sequence[str], chunk: int = CHUNK) -> tuple[np.ndarray, float]:
    """(n, 3) probabilities over ``THREE_WAY_LABELS`` and the seconds spent; progress is logged per chunk."""
    labels = tuple(classifier.labels)
    out = np.empty((len(texts), len(THREE_WAY_LABELS)), dtype=np.float32)
    start = time.perf_counter()
    for i in range(0, len(texts), chunk):
        part = list(texts[i:i + chunk])
        out[i:i + len(part)] = three_way_columns(np.asarray(classifier.predict_proba(part), np.float32), labels)
        done = i + len(part)
        seconds = time.perf_counter() - start
        log.info("teacher: %d/%d texts, %.0f texts/s", done, len(texts), done / max(seconds, 1e-9))
    return out, time.perf_counter() - start


def write_teacher_file(path: str | Path, texts: Sequence[str], sources: Sequence[str], probs: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {"text": pa.array(list(texts), pa.string()), "source": pa.array(list(sources), pa.string())}
    for j, name in enumerate(THREE_WAY_LABELS):
        columns[f"p_{name}"] = pa.array(probs[:, j], pa.float32())
    pq.write_table(pa.table(columns), path, compression="zstd")


def run(model: str, out: str | Path, device: str = "auto", sst2_dir: str | Path | None = SST2_DIR,
        sms: str | Path | None = SMS_FILE, sentiment140: str | Path | None = SENTIMENT140_FILE,
        exclude: Sequence[str | Path] = (MESSAGES_DEV,), sst2_fraction: float = 1.0, seed: int = 42,
        limit: int | None = None, chunk: int = CHUNK, augmentation: Augmentation | None = None,
        augment_base: str | None = None) -> dict:
    """Label the teacher texts (and, with ``augmentation``, their variants) with ``model`` and write the file;
    returns counts, seconds and texts/s, overall and per source, and the share of each source's texts whose top
    class is each class."""
    from screener.classifiers.registry import load_classifier

    data = teacher_texts(sst2_dir, sms, sentiment140, exclude, sst2_fraction, seed, limit)
    if not data.texts:
        raise ValueError("no texts to label: give an SST-2 folder or message files")
    if augmentation is not None and augmentation.variants:
        data = with_variants(data, augmentation, augment_base, sst2_dir, exclude)
    start = time.perf_counter()
    classifier = load_classifier(model, device=device)
    load_seconds = time.perf_counter() - start
    try:
        probs, seconds = label_texts(classifier, data.texts, chunk)
        summary = {"model": classifier.name, "model_id": classifier.model_id,
                   "model_classes": list(classifier.labels)}
    finally:
        classifier.close()
    write_teacher_file(out, data.texts, data.sources, probs)
    sources = np.asarray(data.sources)
    top = np.argmax(probs, axis=1)
    summary.update({
        "out": str(out), "device": device, "rows": len(data.texts), "load_seconds": round(load_seconds, 3),
        "seconds": round(seconds, 3), "texts_per_s": round(len(data.texts) / max(seconds, 1e-9), 1),
        "sources": {
            name: {"rows": int(np.sum(sources == name)),
                   "top_class_share": {c: float(np.mean(top[sources == name] == j))
                                       for j, c in enumerate(THREE_WAY_LABELS)}}
            for name in dict.fromkeys(data.sources)},
    })
    log.info("teacher: %d texts in %.1f s (%.0f texts/s) after %.1f s loading; wrote %s", summary["rows"],
             seconds, summary["texts_per_s"], load_seconds, out)
    return summary


def optional_path(value: str) -> str | None:
    return None if value in ("", "none") else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Label SST-2 train and the unlabelled message texts with a "
                                                 "classifier's class probabilities (a teacher file).")
    parser.add_argument("--model", required=True, help="model folder or shipped model name")
    parser.add_argument("--out", required=True, help="the Parquet file to write")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sst2", default=str(SST2_DIR), help="folder with SST-2 train.tsv ('none': leave out)")
    parser.add_argument("--sms", default=str(SMS_FILE), help="SMSSpamCollection.tsv ('none': leave out)")
    parser.add_argument("--sentiment140", default=str(SENTIMENT140_FILE),
                        help="sentiment140_sample.csv ('none': leave out)")
    parser.add_argument("--exclude", action="append", default=None,
                        help="labelled file whose texts are never labelled (repeat; default: messages_dev.tsv)")
    parser.add_argument("--sst2-fraction", type=float, default=1.0, help="seeded share of SST-2 train")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--limit", type=int, default=None, help="at most N SST-2 and N message texts")
    parser.add_argument("--chunk", type=int, default=CHUNK, help="texts per predict_proba call")
    parser.add_argument("--augment", type=int, default=0, metavar="N",
                        help="also label up to N augmented variants of every text (default 0: none)")
    parser.add_argument("--augment-base", default=None,
                        help="encoder whose word embeddings pick replacement words (pypi:NAME or a folder); "
                             "without it, replacements are drawn from the texts' word frequencies")
    parser.add_argument("--summary", default=None, help="also write the summary JSON to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    summary = run(args.model, args.out, args.device, optional_path(args.sst2), optional_path(args.sms),
                  optional_path(args.sentiment140), args.exclude or [str(MESSAGES_DEV)], args.sst2_fraction,
                  args.seed, args.limit, args.chunk,
                  Augmentation(variants=args.augment, seed=args.seed) if args.augment else None, args.augment_base)
    text = json.dumps(summary, indent=2)
    if args.summary:
        Path(args.summary).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
