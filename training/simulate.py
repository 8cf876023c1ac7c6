"""A simulated message archive with known distressed users, from real message texts, for tuning and testing the
flag rule.

How to run (from the repository root; ``../shared`` beside the checkout adds SMS texts, ``--sms-share 0`` leaves
them out):
    python -m training.simulate --out /tmp/sim/archive.parquet --seed 7
    python -m training.simulate --ordinary 40 --distressed 20 --days 14 --out /tmp/small.parquet

It writes the archive (Parquet: ``message_id``, ``user_id``, ``sent_at``, ``text``) and, beside it,
``<name>.truth.json``: the distressed and ordinary user ids, the as-of time the windows end at, the seed and every
parameter.

Texts:
- the hand-labelled development messages (``training/labels/messages_dev.tsv``: SMS from the UCI SMS Spam
  Collection, Almeida & Hidalgo, 2011, CC BY 4.0, and Sentiment140 posts, Go, Bhayani & Huang, 2009, @handles and
  links masked), which no model was trained on, drawn by their label;
- SMS ham from ``../shared/data/sms/SMSSpamCollection.tsv``, unlabelled everyday messages, where the file exists.

Users:
- each writes on a share of days (``activity``, uniform per user), and on a day they write, a Poisson number of
  messages; their mean per day is log-normal across users (median ``rate_median``, spread ``rate_sigma``), so most
  write a few messages a day, some hardly any and a few many;
- an ordinary user's message is SMS ham with probability ``sms_share``, else a development message whose label
  is drawn from ``ordinary_mix`` (negative, neutral, positive): ordinary life has its bad days too;
- a distressed user writes like an ordinary user until the last ``distress_days`` days, then ``distress_rate``
  times as often, each message a hand-labelled negative with a probability drawn per user from
  ``distress_negative`` (low, high), else an ordinary one.

Kinds are shuffled before user ids are given, so an id says nothing about its user. The same seed and parameters
give the same archive.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from training.data import MESSAGES_DEV, SMS_FILE, clean_message, load_three_way, read_sms

END = datetime(2026, 3, 1, tzinfo=timezone.utc)
CLASSES = ("negative", "neutral", "positive")
# Messages are sent between 07:00 and 23:00.
DAY_START_S, DAY_END_S = 7 * 3600, 23 * 3600


@dataclass(frozen=True)
class Population:
    """Who writes what, and how often: every parameter of a simulated archive but the seed."""

    ordinary: int = 240
    distressed: int = 60
    days: int = 21
    distress_days: int = 7
    rate_median: float = 5.0
    rate_sigma: float = 0.6
    activity: tuple[float, float] = (0.5, 1.0)
    distress_rate: float = 1.5
    distress_negative: tuple[float, float] = (0.6, 0.8)
    ordinary_mix: tuple[float, float, float] = (0.10, 0.55, 0.35)
    sms_share: float = 0.5

    def __post_init__(self) -> None:
        if self.ordinary < 0 or self.distressed < 0 or self.ordinary + self.distressed == 0:
            raise ValueError("need at least one user, and no negative count")
        if not 1 <= self.distress_days <= self.days:
            raise ValueError(f"distress_days must be between 1 and days ({self.days}), got {self.distress_days}")
        if self.rate_median <= 0 or self.rate_sigma < 0 or self.distress_rate <= 0:
            raise ValueError("rate_median and distress_rate must be positive, rate_sigma not negative")
        low, high = self.activity
        if not 0 < low <= high <= 1:
            raise ValueError(f"activity must be 0 < low <= high <= 1, got {self.activity}")
        low, high = self.distress_negative
        if not 0 <= low <= high <= 1:
            raise ValueError(f"distress_negative must be 0 <= low <= high <= 1, got {self.distress_negative}")
        if len(self.ordinary_mix) != 3 or min(self.ordinary_mix) < 0 or abs(sum(self.ordinary_mix) - 1) > 1e-9:
            raise ValueError(f"ordinary_mix must be three shares summing to 1, got {self.ordinary_mix}")
        if not 0 <= self.sms_share <= 1:
            raise ValueError(f"sms_share must be between 0 and 1, got {self.sms_share}")


@dataclass(frozen=True)
class Texts:
    """The texts users draw from: development messages by label, and SMS ham (possibly none)."""

    labelled: dict[str, list[str]]
    sms: list[str]

    @classmethod
    def load(cls, labelled: Path = MESSAGES_DEV, sms: Path | None = SMS_FILE) -> "Texts":
        """The development messages, and the SMS ham of ``sms`` where that file exists (none when ``sms`` is
        None or absent)."""
        rows = load_three_way(labelled)
        by_label: dict[str, list[str]] = {name: [] for name in CLASSES}
        for text, label in zip(rows.texts, rows.labels):
            by_label[rows.classes[label]].append(text)
        ham = [clean_message(t) for t in read_sms(sms, ham_only=True)] if sms is not None and Path(sms).exists() else []
        return cls(by_label, [t for t in ham if t])


@dataclass(frozen=True)
class Simulated:
    table: pa.Table
    distressed: frozenset[str]
    ordinary: frozenset[str]
    as_of: datetime
    seed: int
    population: Population
    sms_texts: int

    def truth(self) -> dict:
        return {
            "distressed": sorted(self.distressed),
            "ordinary": sorted(self.ordinary),
            "as_of": self.as_of.isoformat(),
            "messages": self.table.num_rows,
            "seed": self.seed,
            "population": dataclasses.asdict(self.population),
            "sms_texts_available": self.sms_texts,
        }


def build(seed: int, population: Population = Population(), texts: Texts | None = None,
          end: datetime = END, user_prefix: str = "user") -> Simulated:
    """The archive of ``population`` drawn with ``seed``; its windows end at ``end``, which no message reaches."""
    p = population
    texts = texts if texts is not None else Texts.load()
    sms_share = p.sms_share if texts.sms else 0.0
    rng = np.random.default_rng(seed)
    kinds = np.array([False] * p.ordinary + [True] * p.distressed)
    rng.shuffle(kinds)
    rows: list[tuple[str, datetime, str]] = []
    distressed, ordinary = set(), set()
    width = max(3, len(str(len(kinds))))
    for u, is_distressed in enumerate(kinds):
        user = f"{user_prefix}-{u + 1:0{width}d}"
        (distressed if is_distressed else ordinary).add(user)
        rate = p.rate_median * float(np.exp(p.rate_sigma * rng.standard_normal()))
        activity = float(rng.uniform(*p.activity))
        negative_share = float(rng.uniform(*p.distress_negative)) if is_distressed else 0.0
        for day in range(p.days):
            late = is_distressed and p.days - day <= p.distress_days
            if rng.random() >= activity:
                continue
            count = int(rng.poisson(rate / activity * (p.distress_rate if late else 1.0)))
            day_start = end - timedelta(days=p.days - day)
            for _ in range(count):
                if late and rng.random() < negative_share:
                    pool = texts.labelled["negative"]
                elif rng.random() < sms_share:
                    pool = texts.sms
                else:
                    pool = texts.labelled[CLASSES[rng.choice(3, p=p.ordinary_mix)]]
                when = day_start + timedelta(seconds=float(rng.uniform(DAY_START_S, DAY_END_S)))
                rows.append((user, when, pool[int(rng.integers(len(pool)))]))
    rows.sort(key=lambda r: (r[1], r[0]))
    table = pa.table({
        "message_id": pa.array([f"msg-{i + 1:07d}" for i in range(len(rows))], pa.string()),
        "user_id": pa.array([r[0] for r in rows], pa.string()),
        "sent_at": pa.array([r[1] for r in rows], pa.timestamp("us", tz="UTC")),
        "text": pa.array([r[2] for r in rows], pa.string()),
    })
    return Simulated(table, frozenset(distressed), frozenset(ordinary), end, seed, p, len(texts.sms))


def truth_path(archive: Path) -> Path:
    """Where the ground truth of ``archive`` lies: ``<name>.truth.json`` beside it."""
    return archive.with_name(archive.name.removesuffix(".parquet") + ".truth.json")


def write(sim: Simulated, archive: Path) -> Path:
    """Write the archive and its ground truth beside it; returns the truth file's path."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(sim.table, archive, compression="zstd")
    truth = truth_path(archive)
    truth.write_text(json.dumps(sim.truth(), indent=2) + "\n", encoding="utf-8")
    return truth


def _pair(text: str) -> tuple[float, float]:
    low, high = (float(v) for v in text.split(","))
    return low, high


def main(argv: list[str] | None = None) -> None:
    d = Population()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the archive's Parquet file; the truth goes beside it")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--ordinary", type=int, default=d.ordinary)
    parser.add_argument("--distressed", type=int, default=d.distressed)
    parser.add_argument("--days", type=int, default=d.days)
    parser.add_argument("--distress-days", type=int, default=d.distress_days)
    parser.add_argument("--rate-median", type=float, default=d.rate_median, help="median messages a day")
    parser.add_argument("--rate-sigma", type=float, default=d.rate_sigma)
    parser.add_argument("--activity", type=_pair, default=d.activity, help="LOW,HIGH share of days a user writes")
    parser.add_argument("--distress-rate", type=float, default=d.distress_rate)
    parser.add_argument("--distress-negative", type=_pair, default=d.distress_negative, help="LOW,HIGH")
    parser.add_argument("--ordinary-mix", type=lambda s: tuple(float(v) for v in s.split(",")),
                        default=d.ordinary_mix, help="NEGATIVE,NEUTRAL,POSITIVE shares")
    parser.add_argument("--sms-share", type=float, default=d.sms_share)
    parser.add_argument("--sms", default=str(SMS_FILE), help="SMSSpamCollection.tsv; left out when absent")
    args = parser.parse_args(argv)
    population = Population(
        ordinary=args.ordinary, distressed=args.distressed, days=args.days, distress_days=args.distress_days,
        rate_median=args.rate_median, rate_sigma=args.rate_sigma, activity=args.activity,
        distress_rate=args.distress_rate, distress_negative=args.distress_negative,
        ordinary_mix=args.ordinary_mix, sms_share=args.sms_share)
    sim = build(args.seed, population, Texts.load(sms=Path(args.sms)))
    truth = write(sim, Path(args.out))
    print(f"wrote {sim.table.num_rows} messages from {len(sim.distressed) + len(sim.ordinary)} users "
          f"({len(sim.distressed)} distressed) to {args.out}; truth in {truth}"
          + ("" if sim.sms_texts else "; no SMS texts (the SMS file is absent)"))


if __name__ == "__main__":
    main()
