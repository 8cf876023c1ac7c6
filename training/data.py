"""Labelled sentiment data: SST-2 from local TSV/CSV/Parquet (or the Hub where a network exists).

Label convention everywhere: 1 = positive, 0 = negative (SST-2's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl


@dataclass(frozen=True)
class Labelled:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


def read_table(path: Path, what: str) -> pl.DataFrame:
    """A TSV, CSV or Parquet file as a DataFrame; TSV and CSV columns are read as text."""
    if not path.exists():
        raise FileNotFoundError(f"no such {what}: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pl.read_parquet(path)
    if suffix in (".tsv", ".csv"):
        sep = "\t" if suffix == ".tsv" else ","
        # SST-2 sentences contain quote characters that are not CSV quoting.
        return pl.read_csv(path, separator=sep, quote_char=None if sep == "\t" else '"', infer_schema_length=0)
    raise ValueError(f"unsupported {what} type {suffix!r}: expected .tsv, .csv or .parquet")


def read_labelled(path: str | Path, text_col: str = "text", label_col: str = "label",
                  positive: str | None = None, negative: str | None = None) -> Labelled:
    """Read a TSV, CSV or Parquet file of texts and labels.

    SST-2's TSV files name their text column ``sentence``; it is accepted for ``text``. When ``positive`` and
    ``negative`` are given, labels are matched as strings against them; otherwise they must be 0/1.
    """
    path = Path(path)
    df = read_table(path, "data file")
    if text_col not in df.columns and text_col == "text" and "sentence" in df.columns:
        text_col = "sentence"
    for col in (text_col, label_col):
        if col not in df.columns:
            raise ValueError(f"{path}: expected a column {col!r}, found {df.columns}")
    raw = df[label_col].cast(pl.Utf8).to_list()
    if positive is not None or negative is not None:
        mapping = {str(positive): 1, str(negative): 0}
    else:
        mapping = {"1": 1, "0": 0}
    labels = []
    for i, value in enumerate(raw):
        if value not in mapping:
            raise ValueError(f"{path}: row {i + 1}: label {value!r} is not one of {sorted(mapping)}")
        labels.append(mapping[value])
    texts = [t if t is not None else "" for t in df[text_col].cast(pl.Utf8).to_list()]
    return Labelled(texts, labels)


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


