"""Training recipes: TOML files in ``training/recipes/NAME.toml``, validated against one schema before training.

A recipe's ``kind`` picks its schema and its trainer: ``llm-lora`` (``training.llm``, causal LMs with LoRA
through Unsloth) or ``encoder`` (``training.encoder``, sequence classifiers such as MiniLM). Unknown keys are
refused, so a typo never silently falls back to a default; every number has a range and every string with a
fixed set of values is checked against it. A validated recipe is a plain dict holding every key of its kind
(defaults filled in); ``load_recipe`` adds the file's stem as ``name``. Each trainer validates what it is given
through :func:`for_trainer`, so a recipe built in code meets the same checks as one read from a file.

This module imports no trainer: the trainers import it.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from screener.classifiers.hf import DEFAULT_MAX_LENGTH
from screener.errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
REQUIRED = ...
NUMBER = (float, int)


@dataclass(frozen=True)
class Range:
    """The values a numeric key accepts; a bound of None is open-ended."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                f"{')' if self.high_open else ']'}")


AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
FRACTION = Range(0, 1)
DROPOUT = Range(0, 1, high_open=True)


@dataclass(frozen=True)
class Key:
    """One recipe key: the types it accepts, its default (``REQUIRED``: none) and the values allowed."""

    types: tuple[type, ...]
    default: object = REQUIRED
    range: Range | None = None
    choices: tuple[str, ...] = ()
    items: type | None = None  # the element type of a list

    def check(self, name: str, value, where: str) -> None:
        # TOML integers are fine where floats are expected, but a bool is not an int here.
        if isinstance(value, bool) and bool not in self.types or not isinstance(value, self.types):
            raise ConfigError(f"{where}: key {name!r} expects {' or '.join(t.__name__ for t in self.types)}, "
                              f"found {value!r}")
        if self.items is not None and not all(isinstance(v, self.items) for v in value):
            raise ConfigError(f"{where}: key {name!r} expects a list of {self.items.__name__}, found {value!r}")
        if self.choices and value not in self.choices:
            raise ConfigError(f"{where}: key {name!r} is {value!r}; expected one of {', '.join(self.choices)}")
        if self.range is not None and value not in self.range:
            raise ConfigError(f"{where}: key {name!r} must be {self.range}, found {value!r}")


def choice(*choices: str, default=REQUIRED) -> Key:
    return Key((str,), default, choices=choices)


def names(default: list[str]) -> Key:
    return Key((list,), default, items=str)


@dataclass(frozen=True)
class RecipeSchema:
    """Every key a recipe of one ``kind`` may hold, in the order a validated recipe lists them."""

    kind: str
    keys: dict[str, Key]

    def __post_init__(self) -> None:
        for name, key in self.keys.items():
            if any(t in NUMBER for t in key.types) and key.range is None:
                raise TypeError(f"recipe key {name!r} of kind {self.kind!r} is numeric but has no range")
            if key.default is not REQUIRED:
                key.check(name, key.default, f"the {self.kind!r} schema's default")

    def validate(self, raw: Mapping, where: str) -> dict:
        unknown = sorted(set(raw) - set(self.keys))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} for a {self.kind!r} recipe; "
                              f"known keys: {', '.join(sorted(self.keys))}")
        recipe = {}
        for name, key in self.keys.items():
            if name not in raw:
                if key.default is REQUIRED:
                    raise ConfigError(f"{where}: missing required key {name!r}")
                recipe[name] = list(key.default) if isinstance(key.default, list) else key.default
                continue
            key.check(name, raw[name], where)
            recipe[name] = raw[name]
        return recipe


# What a recipe trains on besides SST-2 train (which comes from the --data folder): paths are relative to the
# working directory or the repository.
DATA_KEYS = {
    "sst2_fraction": Key(NUMBER, 1.0, FRACTION),  # a seeded random share of SST-2 train (1: all of it, in order)
    # a hand-labelled three-way message file (training/labels layout), repeated messages_repeat times
    "messages": Key((str,), ""),
    "messages_repeat": Key((int,), 1, AT_LEAST_1),
    # a labelled file none of whose texts is trained on (case-insensitively): the development set
    "exclude": Key((str,), ""),
}

LLM_LORA = RecipeSchema("llm-lora", {
    "kind": choice("llm-lora"),
    "description": Key((str,), ""),
    # causal-lm: next-token loss on the response (label word and end of text), the paper's way;
    # label-token: cross-entropy over the two label tokens' logits at the last prompt position.
    "objective": choice("causal-lm", "label-token"),
    "learning_rate": Key(NUMBER, REQUIRED, POSITIVE),
    "batch_size": Key((int,), REQUIRED, AT_LEAST_1),
    "grad_accum": Key((int,), 1, AT_LEAST_1),
    "max_steps": Key((int,), 0, NON_NEGATIVE),  # 0: run ``epochs`` over the data
    "epochs": Key(NUMBER, 1.0, POSITIVE),
    "warmup_steps": Key((int,), 0, NON_NEGATIVE),
    "lr_scheduler": choice("linear", "cosine", "constant", default="linear"),
    "optimizer": choice("adamw", default="adamw"),
    "weight_decay": Key(NUMBER, 0.0, NON_NEGATIVE),
    "precision": choice("fp16", "bf16", "fp32", default="bf16"),
    "lora_r": Key((int,), 16, AT_LEAST_1),
    "lora_alpha": Key((int,), 16, AT_LEAST_1),
    "lora_dropout": Key(NUMBER, 0.0, DROPOUT),
    "target_modules": names(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "gradient_checkpointing": Key((bool,), False),
    # Capture whole training steps as CUDA graphs (label-token objective, grad_accum 1, bf16/fp32 on a GPU only).
    "cuda_graphs": Key((bool,), False),
    "max_seq_length": Key((int,), 512, AT_LEAST_1),
    "length_grouped": Key((bool,), True),
    "seed": Key((int,), 3407, NON_NEGATIVE),
    "backend": choice("auto", "unsloth", "peft", default="auto"),
    "instruction": Key((str,), ""),  # empty: the prompt the classifier scores with
    # The classes, as the words whose first tokens the classifier reads; one of them is "negative".
    "label_words": names(["negative", "positive"]),
    **DATA_KEYS,
})

ENCODER = RecipeSchema("encoder", {
    "kind": choice("encoder"),
    "description": Key((str,), ""),
    # 2: (negative, positive); 3: (negative, neutral, positive)
    "num_labels": Key((int,), 2, Range(2, 3)),
    # lora: an adapter over a base that the folder names, so the folder stays a few MB; full: all weights;
    # layers: every weight but the embeddings, written as those tensors alone over the base the folder names.
    "method": choice("lora", "full", "layers", default="lora"),
    "epochs": Key(NUMBER, 3.0, POSITIVE),
    "batch_size": Key((int,), 32, AT_LEAST_1),
    "learning_rate": Key(NUMBER, 5e-4, POSITIVE),  # the adapter's, or the full weights'
    "head_learning_rate": Key(NUMBER, 0.0, NON_NEGATIVE),  # classifier and pooler; 0: learning_rate
    "weight_decay": Key(NUMBER, 0.01, NON_NEGATIVE),
    "warmup_ratio": Key(NUMBER, 0.06, FRACTION),  # share of the steps warming up, then linear decay to 0
    # The classifier loader refuses fewer than 4 tokens per text (special tokens included).
    "max_length": Key((int,), DEFAULT_MAX_LENGTH, Range(4)),
    "lora_r": Key((int,), 32, AT_LEAST_1),
    "lora_alpha": Key(NUMBER, 64, POSITIVE),
    "lora_dropout": Key(NUMBER, 0.1, DROPOUT),
    "target_modules": names(["query", "key", "value", "output.dense", "intermediate.dense"]),
    "modules_to_save": names(["classifier", "pooler"]),
    "seed": Key((int,), 42, NON_NEGATIVE),
    **DATA_KEYS,
    # a file of teacher class probabilities for the training texts (training.teacher writes one)
    "teacher": Key((str,), ""),
    "distill_alpha": Key(NUMBER, 1.0, FRACTION),  # weight of the teacher against the hard label
    # softens the teacher's and the student's distributions in the teacher's term (Hinton et al., 2015), which is
    # scaled by its square; 1: the teacher's probabilities as they are
    "distill_temperature": Key(NUMBER, 1.0, Range(1, 20)),
    # the teacher file's message texts join the training rows with the teacher's targets alone
    "teacher_unlabelled": Key((bool,), False),
    # the least share of the labelled training texts the teacher file must have scored
    "teacher_coverage": Key(NUMBER, 0.95, FRACTION),
    # the development file each epoch is scored on (empty: dev.tsv of the --data folder); never trained on
    "dev": Key((str,), ""),
    # keep the epoch with the best dev select_metric (dev is the only split tuned on)
    "select_best": Key((bool,), False),
    "select_metric": choice("accuracy", "macro_f1", default="accuracy"),
    # a model folder written by this trainer (or its adapter/ folder) whose LoRA weights and head to start from
    "init_adapter": Key((str,), ""),
    "eval_batch_size": Key((int,), 256, AT_LEAST_1),
})

SCHEMAS = {schema.kind: schema for schema in (LLM_LORA, ENCODER)}


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def recipe_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml":
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist")
        return path
    named = RECIPES_DIR / f"{name_or_path}.toml"
    if not named.is_file():
        raise ConfigError(f"unknown recipe {str(name_or_path)!r}: expected one of {', '.join(recipe_names())} "
                          "or a path to a .toml file")
    return named


def schema_for(kind: str) -> RecipeSchema:
    if kind not in SCHEMAS:
        raise ConfigError(f"recipe kind {kind!r} is not one of {', '.join(repr(k) for k in SCHEMAS)}")
    return SCHEMAS[kind]


def validate(raw: Mapping, where: str) -> dict:
    """``raw`` checked against the schema of its ``kind``, with defaults filled in."""
    kind = raw.get("kind")
    if not isinstance(kind, str):
        raise ConfigError(f"{where}: expected a string key 'kind' ({' or '.join(repr(k) for k in SCHEMAS)}), "
                          f"found {kind!r}")
    return schema_for(kind).validate(raw, where)


def load_recipe(name_or_path: str | Path) -> dict:
    """A validated recipe dict (defaults filled in) from a recipe name or a .toml path."""
    path = recipe_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    recipe = validate(raw, str(path))
    recipe["name"] = path.stem
    return recipe


def with_name(recipe: Mapping, where: str) -> dict:
    """:func:`validate` for a recipe that may carry the ``name`` :func:`load_recipe` gave it; the name is kept."""
    checked = validate({k: v for k, v in recipe.items() if k != "name"}, where)
    if "name" in recipe:
        checked["name"] = recipe["name"]
    return checked


def override(recipe: Mapping, changes: Mapping, where: str) -> dict:
    """``recipe`` with ``changes`` applied, validated again."""
    return with_name({**recipe, **changes}, where)


def parse_overrides(items: list[str]) -> dict:
    """``KEY=VALUE`` command-line overrides as a dict; a value is read as JSON where it parses, else as text."""
    changes = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE")
        try:
            changes[key] = json.loads(value)
        except json.JSONDecodeError:
            changes[key] = value
    return changes


def for_trainer(recipe: Mapping, kind: str) -> dict:
    """What a trainer of ``kind`` trains with: ``recipe`` (from :func:`load_recipe`, or a dict built in code)
    validated, defaults filled in, its ``name`` kept. A recipe of another kind is refused."""
    name = recipe.get("name")
    if recipe.get("kind") != kind:
        raise ConfigError(f"recipe {name!r} has kind {recipe.get('kind')!r}; expected {kind!r}")
    return with_name(recipe, f"recipe {name!r}")
