"""Training recipes: TOML files in ``training/recipes/NAME.toml``, validated before any training starts.

A recipe's ``kind`` picks the trainer: ``llm-lora`` (``training.llm``, causal LMs with LoRA through Unsloth) or
``encoder`` (``training.encoder``, sequence classifiers such as MiniLM). Unknown keys are refused, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

from screener.errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"

# key -> (accepted types, default); a default of ``...`` marks a required key
LLM_LORA_SCHEMA: dict[str, tuple[tuple[type, ...], object]] = {
    "kind": ((str,), ...),
    "description": ((str,), ""),
    # causal-lm: next-token loss on the response (label word and end of text), the paper's way;
    # label-token: cross-entropy over the two label tokens' logits at the last prompt position.
    "objective": ((str,), ...),
    "learning_rate": ((float, int), ...),
    "batch_size": ((int,), ...),
    "grad_accum": ((int,), 1),
    "max_steps": ((int,), 0),  # 0: run ``epochs`` over the data
    "epochs": ((float, int), 1.0),
    "warmup_steps": ((int,), 0),
    "lr_scheduler": ((str,), "linear"),
    "optimizer": ((str,), "adamw"),
    "weight_decay": ((float, int), 0.0),
    "precision": ((str,), "bf16"),
    "lora_r": ((int,), 16),
    "lora_alpha": ((int,), 16),
    "lora_dropout": ((float, int), 0.0),
    "target_modules": ((list,), ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "gradient_checkpointing": ((bool,), False),
    # Capture whole training steps as CUDA graphs (label-token objective, grad_accum 1, bf16/fp32 on a GPU only).
    "cuda_graphs": ((bool,), False),
    "max_seq_length": ((int,), 512),
    "length_grouped": ((bool,), True),
    "seed": ((int,), 3407),
    "backend": ((str,), "auto"),
    "instruction": ((str,), ""),
}

CHOICES = {
    "objective": ("causal-lm", "label-token"),
    "lr_scheduler": ("linear", "cosine", "constant"),
    "optimizer": ("adamw",),
    "precision": ("fp16", "bf16", "fp32"),
    "backend": ("auto", "unsloth", "peft"),
}


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


def schema_for(kind: str) -> dict:
    if kind == "llm-lora":
        return LLM_LORA_SCHEMA
    if kind == "encoder":
        # The encoder trainer owns its keys; its module is light to import (torch is imported inside train()).
        return importlib.import_module("training.encoder").RECIPE_SCHEMA
    raise ConfigError(f"recipe kind {kind!r} is not one of 'llm-lora', 'encoder'")


def validate(raw: dict, where: str) -> dict:
    kind = raw.get("kind")
    if not isinstance(kind, str):
        raise ConfigError(f"{where}: expected a string key 'kind' ('llm-lora' or 'encoder'), found {kind!r}")
    schema = schema_for(kind)
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} for a {kind!r} recipe; "
                          f"known keys: {', '.join(sorted(schema))}")
    recipe = {}
    for key, (types, default) in schema.items():
        if key not in raw:
            if default is ...:
                raise ConfigError(f"{where}: missing required key {key!r}")
            recipe[key] = list(default) if isinstance(default, list) else default
            continue
        value = raw[key]
        # TOML integers are fine where floats are expected, but a bool is not an int here.
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise ConfigError(f"{where}: key {key!r} expects {' or '.join(t.__name__ for t in types)}, "
                              f"found {value!r}")
        if key in CHOICES and kind == "llm-lora" and value not in CHOICES[key]:
            raise ConfigError(f"{where}: key {key!r} is {value!r}; expected one of {', '.join(CHOICES[key])}")
        recipe[key] = value
    if kind == "llm-lora":
        for key in ("batch_size", "grad_accum", "lora_r", "max_seq_length"):
            if recipe[key] < 1:
                raise ConfigError(f"{where}: {key} must be at least 1, found {recipe[key]}")
        if recipe["max_steps"] < 0 or recipe["epochs"] <= 0:
            raise ConfigError(f"{where}: expected max_steps >= 0 and epochs > 0")
    return recipe


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
