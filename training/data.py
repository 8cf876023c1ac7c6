"""Text for training and evaluation: labelled files, SST-2, the unlabelled message texts and a recipe's mix.

Labels are class indices into the class names the data carries (``Labelled.classes``): SST-2's 0/1 index
``("negative", "positive")`` (``BINARY_LABELS``), the hand-labelled message files' words index
``("negative", "neutral", "positive")`` (``THREE_WAY_LABELS``). ``Labelled.in_classes`` re-indexes by name, so
SST-2 in the three-way space is negative = 0, positive = 2.

Files are read with the standard library (TSV, CSV) and pyarrow (Parquet), not polars, which the GPU image lacks.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from screener.classifiers.base import BINARY_LABELS, NEUTRAL, THREE_WAY_LABELS

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
SMS_FILE = SHARED / "data" / "sms" / "SMSSpamCollection.tsv"
SENTIMENT140_FILE = SHARED / "data" / "sentiment140" / "sentiment140_sample.csv"
SST2_DIR = SHARED / "data" / "sst2"
MESSAGES_DEV = REPO_ROOT / "training" / "labels" / "messages_dev.tsv"
MESSAGES_TRAIN = REPO_ROOT / "training" / "labels" / "messages_train.tsv"
TEXT_COLUMNS = ("text", "sentence")
SMS_LABELS = frozenset({"ham", "spam"})

csv.field_size_limit(1 << 30)


@dataclass(frozen=True)
class Labelled:
    """Texts and their class indices into ``classes``."""

    texts: list[str]
    labels: list[int]
    classes: tuple[str, ...] = BINARY_LABELS

    def __len__(self) -> int:
        return len(self.texts)

    def in_classes(self, classes: Sequence[str]) -> Labelled:
        """The same rows with labels re-indexed by class name into ``classes``."""
        classes = tuple(classes)
        missing = sorted({self.classes[y] for y in self.labels} - set(classes))
        if missing:
            raise ValueError(f"the data has class(es) {missing} that {list(classes)} lacks")
        index = [classes.index(name) if name in classes else -1 for name in self.classes]
        return Labelled(list(self.texts), [index[y] for y in self.labels], classes)

    def take(self, rows: Iterable[int]) -> Labelled:
        rows = list(rows)
        return Labelled([self.texts[i] for i in rows], [self.labels[i] for i in rows], self.classes)


def concat(parts: Sequence[Labelled], classes: Sequence[str]) -> Labelled:
    """The rows of every part, in order, in ``classes``."""
    texts, labels = [], []
    for part in parts:
        part = part.in_classes(classes)
        texts += part.texts
        labels += part.labels
    return Labelled(texts, labels, tuple(classes))


def read_table(path: Path, what: str) -> dict[str, list]:
    """A TSV, CSV or Parquet file as columns (name -> values); TSV and CSV values are strings.

    TSV is read without quoting, since SST-2 sentences hold quote characters that are not quoting.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such {what}: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pydict()
    if suffix not in (".tsv", ".csv"):
        raise ValueError(f"unsupported {what} type {suffix!r}: expected .tsv, .csv or .parquet")
    with open(path, encoding="utf-8", newline="") as fh:
        if suffix == ".tsv":
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty {what}")
        columns: dict[str, list] = {name: [] for name in header}
        names = list(columns)
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}: line {reader.line_num} has {len(row)} fields; the header has "
                                 f"{len(header)}")
            for name, value in zip(names, row):
                columns[name].append(value)
    return columns


def text_column(columns: Mapping[str, list], path: Path, text_col: str = "text") -> str:
    """``text_col``, or SST-2's ``sentence`` where ``text`` is asked for and absent."""
    if text_col not in columns and text_col == "text" and "sentence" in columns:
        return "sentence"
    if text_col not in columns:
        raise ValueError(f"{path}: expected a column {text_col!r}, found {list(columns)}")
    return text_col


def label_mapping(values: set[str], positive, negative) -> tuple[dict[str, int], tuple[str, ...]]:
    """How a file's label strings map to class indices, and the classes: 0/1 (SST-2's), the class words
    (three-way where any label is ``neutral``), or the ``positive`` and ``negative`` values given."""
    if positive is not None or negative is not None:
        return {str(negative): 0, str(positive): 1}, BINARY_LABELS
    if values <= {"0", "1"}:
        return {"0": 0, "1": 1}, BINARY_LABELS
    if values <= set(THREE_WAY_LABELS):
        classes = THREE_WAY_LABELS if NEUTRAL in values else BINARY_LABELS
        return {name: i for i, name in enumerate(classes)}, classes
    return {"0": 0, "1": 1}, BINARY_LABELS


def read_labelled(path: str | Path, text_col: str = "text", label_col: str = "label",
                  positive: str | None = None, negative: str | None = None) -> Labelled:
    """Texts and labels from a TSV, CSV or Parquet file.

    Labels are 0/1 (1 positive, SST-2's), or the words negative/neutral/positive (three classes when any label is
    neutral), or, when ``positive`` and ``negative`` are given, those two values. SST-2's TSV files name their
    text column ``sentence``; it is accepted for ``text``.
    """
    path = Path(path)
    columns = read_table(path, "data file")
    text_col = text_column(columns, path, text_col)
    if label_col not in columns:
        raise ValueError(f"{path}: expected a column {label_col!r}, found {list(columns)}")
    raw = ["" if v is None else str(v) for v in columns[label_col]]
    mapping, classes = label_mapping(set(raw), positive, negative)
    labels = []
    for i, value in enumerate(raw):
        if value not in mapping:
            raise ValueError(f"{path}: row {i + 1}: label {value!r} is not one of {sorted(mapping)} "
                             f"(or the words {', '.join(THREE_WAY_LABELS)})")
        labels.append(mapping[value])
    texts = ["" if t is None else str(t) for t in columns[text_col]]
    return Labelled(texts, labels, classes)


def load_three_way(path: str | Path) -> Labelled:
    """A hand-labelled message file (``training/labels``): labels are the words negative, neutral or positive."""
    path = Path(path)
    columns = read_table(path, "labelled message file")
    text_col = text_column(columns, path)
    if "label" not in columns:
        raise ValueError(f"{path}: expected a column 'label', found {list(columns)}")
    labels = []
    for i, value in enumerate(columns["label"]):
        if value not in THREE_WAY_LABELS:
            raise ValueError(f"{path}: row {i + 1}: label {value!r} is not one of {', '.join(THREE_WAY_LABELS)}")
        labels.append(THREE_WAY_LABELS.index(value))
    return Labelled(["" if t is None else str(t) for t in columns[text_col]], labels, THREE_WAY_LABELS)


def load_sst2(split: str, data_dir: str | Path | None = None) -> Labelled:
    """SST-2 ``train`` or ``dev`` from ``data_dir`` (``train.tsv``/``dev.tsv`` or ``.parquet``), else the Hub."""
    if split not in ("train", "dev"):
        raise ValueError(f"split must be 'train' or 'dev', got {split!r}")
    if data_dir is not None:
        base = Path(data_dir)
        for name in (f"{split}.tsv", f"{split}.parquet", f"{split}.csv"):
            if (base / name).exists():
                return read_labelled(base / name)
        raise FileNotFoundError(f"no {split}.tsv, {split}.parquet or {split}.csv in {base}")
    from datasets import load_dataset  # network path, for users with access to the Hub

    ds = load_dataset("glue", "sst2", split="validation" if split == "dev" else "train")
    return Labelled(list(ds["sentence"]), [int(x) for x in ds["label"]])


def subsample(rows: Labelled, fraction: float, seed: int) -> Labelled:
    """A seeded random ``fraction`` of the rows, in their original order (all of them, unchanged, at 1)."""
    if fraction >= 1.0:
        return rows
    import numpy as np

    keep = np.random.default_rng(seed).choice(len(rows), size=round(len(rows) * fraction), replace=False)
    return rows.take(sorted(int(i) for i in keep))


HANDLE = re.compile(r"@\w+")
LINK = re.compile(r"(?:https?://|www\.)\S+")
SPACE = re.compile(r"\s+")


def clean_message(text: str) -> str:
    """A message as ``training/labels`` holds it: @handles as ``@user``, links as ``http://url``, runs of
    whitespace as one space, no leading or trailing space. No user name of the sources survives it."""
    text = HANDLE.sub("@user", text)
    text = LINK.sub("http://url", text)
    return SPACE.sub(" ", text).strip()


def text_key(text: str) -> str:
    """What two texts share when they count as the same message: the cleaned text, case-insensitively."""
    return clean_message(text).casefold()


def read_sms(path: str | Path = SMS_FILE, ham_only: bool = False) -> list[str]:
    """The SMS Spam Collection's texts (``label<TAB>text`` after a header), every message or the ham only."""
    columns = read_table(Path(path), "SMS file")
    if len(columns) != 2:
        raise ValueError(f"{path}: expected two columns (label, text), found {list(columns)}")
    label_col, text_col = list(columns)
    return [t for y, t in zip(columns[label_col], columns[text_col]) if not ham_only or y == "ham"]


def is_sms_collection(path: str | Path) -> bool:
    """Whether a file is laid out like the SMS Spam Collection: two columns, labels ham and spam."""
    try:
        columns = read_table(Path(path), "data file")
    except (FileNotFoundError, ValueError):
        return False
    return len(columns) == 2 and set(next(iter(columns.values()))) <= SMS_LABELS


def read_sentiment140(path: str | Path = SENTIMENT140_FILE) -> list[str]:
    """The Sentiment140 sample's tweet texts, raw; only the text column is read, never the user names."""
    columns = read_table(Path(path), "Sentiment140 file")
    if "text" not in columns:
        raise ValueError(f"{path}: expected a column 'text', found {list(columns)}")
    return list(columns["text"])


def excluded_keys(paths: Iterable[str | Path]) -> set[str]:
    """The :func:`text_key` of every text in these labelled files."""
    keys: set[str] = set()
    for path in paths:
        columns = read_table(Path(path), "file of texts to exclude")
        keys.update(text_key(t or "") for t in columns[text_column(columns, Path(path))])
    return keys


@dataclass(frozen=True)
class Unlabelled:
    """Texts without labels and the source each came from."""

    texts: list[str]
    sources: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def unlabelled_messages(sms: str | Path | None = SMS_FILE, sentiment140: str | Path | None = SENTIMENT140_FILE,
                        exclude: Iterable[str | Path] = (MESSAGES_DEV,)) -> Unlabelled:
    """Every SMS (ham and spam) and every Sentiment140 text, cleaned (:func:`clean_message`), each message once
    (case-insensitively), none that any ``exclude`` file holds (by default the development set), no empty one."""
    blocked = excluded_keys(exclude)
    texts, sources = [], []
    for source, path, read in (("sms", sms, read_sms), ("sentiment140", sentiment140, read_sentiment140)):
        if path is None:
            continue
        for raw in read(path):
            text = clean_message(raw)
            key = text.casefold()
            if text and key not in blocked:
                blocked.add(key)
                texts.append(text)
                sources.append(source)
    return Unlabelled(texts, sources)


def resolve_repo_path(name: str | Path) -> Path:
    """A path relative to the working directory or else to the repository root."""
    path = Path(name)
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / name).exists():
        path = REPO_ROOT / name
    return path


def without_keys(rows: Labelled, blocked: set[str]) -> Labelled:
    return rows.take(i for i, t in enumerate(rows.texts) if text_key(t) not in blocked)


def training_rows(recipe: Mapping, data_dir: str | Path, classes: Sequence[str]) -> Labelled:
    """A recipe's labelled training rows in ``classes``: a seeded ``sst2_fraction`` of SST-2 train from
    ``data_dir``, then the ``messages`` file repeated ``messages_repeat`` times; no text that the ``exclude`` file
    holds (case-insensitively)."""
    parts = [subsample(load_sst2("train", data_dir), float(recipe["sst2_fraction"]), int(recipe["seed"]))]
    if recipe["messages"]:
        parts += [load_three_way(resolve_repo_path(recipe["messages"]))] * int(recipe["messages_repeat"])
    rows = concat(parts, classes)
    if recipe["exclude"]:
        rows = without_keys(rows, excluded_keys([resolve_repo_path(recipe["exclude"])]))
    return rows


@dataclass(frozen=True)
class EvalSet:
    """Texts to evaluate on: labelled (binary or three-way ``classes``) or, with ``labels`` None, unlabelled."""

    name: str
    path: str
    texts: list[str]
    labels: list[int] | None
    classes: tuple[str, ...]


def read_eval_set(path: str | Path, text_col: str = "text", label_col: str = "label", positive=None,
                  negative=None) -> EvalSet:
    """A labelled file (:func:`read_labelled`), or the SMS Spam Collection, whose ham texts are scored unlabelled
    (its labels are spam or ham, not sentiment)."""
    path = Path(path)
    if positive is None and negative is None and is_sms_collection(path):
        return EvalSet(f"{path.stem} (ham)", str(path), read_sms(path, ham_only=True), None, BINARY_LABELS)
    rows = read_labelled(path, text_col, label_col, positive, negative)
    name = f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem
    return EvalSet(name, str(path), rows.texts, rows.labels, rows.classes)


def default_eval_sets() -> list[Path]:
    """SST-2 dev, the three-way development messages and the SMS Spam Collection (ham), those that exist."""
    return [p for p in (SST2_DIR / "dev.tsv", MESSAGES_DEV, SMS_FILE) if p.is_file()]
