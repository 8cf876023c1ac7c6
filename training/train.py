"""``screener train``: one entry point for every recipe kind."""

from __future__ import annotations

import logging
import time

from screener.errors import InputError
from training.recipes import load_recipe

log = logging.getLogger(__name__)


def run_train(base: str, recipe: str, data_dir: str, output: str, max_steps: int | None = None,
              device: str = "auto") -> dict:
    """Train ``base`` on SST-2 train from ``data_dir`` with a named or file recipe; write a model folder.

    Returns a summary: output path, steps, seconds, and for LLM recipes the backend used ("unsloth" or "peft"),
    tokens/s and the share of the GPU's bf16 peak.
    """
    settings = load_recipe(recipe)
    if settings["kind"] == "encoder":
        from training.encoder import train as train_encoder

        start = time.perf_counter()
        folder = train_encoder(base, settings, data_dir, output, max_steps)
        return {"output": str(folder), "recipe": settings["name"], "backend": "transformers",
                "seconds": round(time.perf_counter() - start, 3)}
    from training.data import load_sst2
    from training.llm import train_llm

    try:
        train = load_sst2("train", data_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(f"cannot read SST-2 training data from {data_dir}: {exc}") from exc
    log.info("training %s with recipe %s on %d examples", base, settings["name"], len(train))
    return train_llm(base, settings, train.texts, train.labels, output, max_steps=max_steps, device=device)
