"""``screener train``: one entry point for every recipe kind.

Also ``python -m training.train --base BASE --recipe NAME --data SST2_DIR --output DIR [--max-steps N]
[--set KEY=VALUE ...]``, for machines without the screener command.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from screener.errors import InputError
from training.recipes import load_recipe, override, parse_overrides

log = logging.getLogger(__name__)


def run_train(base: str, recipe: str | dict, data_dir: str, output: str, max_steps: int | None = None,
              device: str = "auto") -> dict:
    """Train ``base`` with a named or file recipe (or a recipe dict) on SST-2 train from ``data_dir`` and the
    recipe's other data; write a model folder.

    Returns a summary: output path, steps, seconds, and for LLM recipes the backend used ("unsloth" or "peft"),
    tokens/s and the share of the GPU's bf16 peak.
    """
    settings = load_recipe(recipe) if isinstance(recipe, str) else dict(recipe)
    if settings["kind"] == "encoder":
        from training.encoder import train as train_encoder

        start = time.perf_counter()
        folder = train_encoder(base, settings, data_dir, output, max_steps)
        return {"output": str(folder), "recipe": settings.get("name"), "backend": "transformers",
                "seconds": round(time.perf_counter() - start, 3)}
    from training.data import training_rows
    from training.llm import train_llm
    from training.recipes import for_trainer

    settings = for_trainer(settings, "llm-lora")
    try:
        train = training_rows(settings, data_dir, settings["label_words"])
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(f"cannot read the training data of recipe {settings.get('name')!r} (SST-2 from "
                         f"{data_dir}): {exc}") from exc
    log.info("training %s with recipe %s on %d examples", base, settings.get("name"), len(train))
    return train_llm(base, settings, train.texts, train.labels, output, max_steps=max_steps, device=device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a model folder with a recipe.")
    parser.add_argument("--base", required=True, help="base: a .gguf file, a folder, pypi:NAME or a Hub id")
    parser.add_argument("--recipe", required=True, help="recipe name in training/recipes or a TOML path")
    parser.add_argument("--data", required=True, help="folder with SST-2 train.tsv (and dev.tsv)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key (JSON value), e.g. --set sst2_fraction=0.1")
    parser.add_argument("--summary", default=None, help="also write the summary JSON to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    recipe = override(load_recipe(args.recipe), parse_overrides(args.set), f"{args.recipe} with {args.set}")
    summary = run_train(args.base, recipe, args.data, args.output, max_steps=args.max_steps, device=args.device)
    text = json.dumps(summary, indent=2, default=str)
    if args.summary:
        with open(args.summary, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
