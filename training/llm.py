"""LoRA fine-tuning of causal LMs for the label-token classifier: Unsloth's FastLanguageModel, PEFT as fallback.

Two objectives (a recipe's ``objective``):

- ``causal-lm``: the paper's. Each example is the Alpaca prompt followed by the label word and the end-of-text
  token; next-token cross-entropy on those response tokens only.
- ``label-token``: what the classifier is scored with. Cross-entropy over the logits of the label tokens at the
  last prompt position (the output head restricted to their rows), nothing else.

The classes are the recipe's ``label_words`` (``negative`` and ``positive``, or ``negative``, ``neutral`` and
``positive`` for a three-way model); labels are class indices into them.

The output folder holds ``adapter/`` (PEFT LoRA weights), ``screener_model.json`` (kind ``llm-labeltoken``) and
``training_summary.json``; ``screener.classifiers.registry.load_classifier(folder)`` loads it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from screener.classifiers.llm import (BaseRef, dequantized_dir, label_logits, load_tokenizer, pad_batch,
                                      prompt_token_ids, resolve_device)
from screener.errors import ConfigError, ModelError
from screener.prompt import INSTRUCTION, label_classes, label_token_ids
from training.recipes import for_trainer

log = logging.getLogger(__name__)

# Dense bf16 matrix-product rate of one H200: the denominator of a summary's share_of_bf16_peak.
BF16_PEAK_FLOPS = 790e12


def train_llm(base: str, recipe: dict, texts: Sequence[str], labels: Sequence[int], output: str | Path,
              max_steps: int | None = None, device: str = "auto") -> dict:
    """Fine-tune ``base`` with LoRA per ``recipe`` on (texts, labels) and write a classifier folder to ``output``.

    The steps, each a function below: load the base, attach LoRA, build the dataset, train, summarize the run
    (throughput and loss; accuracy is measured by ``training.evaluate`` on the written folder), save the adapter,
    the manifest and the summary. Returns the summary.
    """
    recipe = for_trainer(recipe, "llm-lora")
    words = recipe_label_words(recipe)
    if len(texts) != len(labels) or not texts:
        raise ConfigError(f"expected equal, non-zero numbers of texts and labels, got {len(texts)} and {len(labels)}")
    if not all(0 <= int(y) < len(words) for y in labels):
        raise ConfigError(f"labels must be class indices into the label words {list(words)}")
    t_start = time.perf_counter()
    device = resolve_device(device)
    import_unsloth_first(recipe)
    import torch

    random.seed(recipe["seed"])
    torch.manual_seed(recipe["seed"])
    ref, load_dir = prepare_base(base)
    dtype = training_dtype(recipe["precision"], device)
    model, backend, fallback = load_with_lora(load_dir, recipe, device, dtype)
    tokenizer = load_tokenizer(ref)
    label_ids = label_token_ids(tokenizer, words)
    instruction = recipe["instruction"] or INSTRUCTION
    trainable = trainable_in_fp32(model)
    data = build_dataset(tokenizer, texts, labels, recipe, instruction, label_ids)
    run = train_adapter(model, trainable, data, recipe, dtype, label_ids, tokenizer.pad_token_id, max_steps)
    summary = summarize_run(base, recipe, backend, model, trainable, dtype, data, run)
    summary["unsloth_fallback"] = fallback
    summary["class_counts"] = {word: sum(1 for y in labels if int(y) == i) for i, word in enumerate(words)}

    output = Path(output)
    save_adapter(model, output / "adapter")
    write_manifest(output, base, ref, recipe, instruction, label_ids)
    summary["output"] = str(output)
    summary["seconds"] = round(time.perf_counter() - t_start, 3)
    (output / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def recipe_label_words(recipe: dict) -> tuple[str, ...]:
    """The recipe's label words, checked: two or more distinct words, one of them ``negative``."""
    try:
        return label_classes(recipe["label_words"])
    except ModelError as exc:
        raise ConfigError(f"recipe {recipe.get('name')!r}: {exc}") from exc


def import_unsloth_first(recipe: dict) -> None:
    """Unsloth patches transformers when imported, so it must come before anything imports transformers."""
    if recipe["backend"] == "peft":
        return
    try:
        import unsloth  # noqa: F401
    except Exception:  # reported by load_with_lora, which decides whether to fall back
        pass


def prepare_base(spec: str) -> tuple[BaseRef, str]:
    """The base reference and a folder that ``from_pretrained`` (Unsloth's included) can load: GGUF bases are
    dequantized once into a cache folder, since Unsloth loads folders, not GGUF files."""
    ref = BaseRef(spec)
    return ref, str(dequantized_dir(ref)) if ref.gguf_file else ref.location


def training_dtype(precision: str, device: str):
    import torch

    if not device.startswith("cuda"):
        if precision != "fp32":
            log.warning("%s training is not possible on the CPU; training in fp32 instead", precision)
        return torch.float32
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bf16; training in fp16 instead")
        return torch.float16
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]


def load_with_lora(load_dir: str, recipe: dict, device: str, dtype):
    """(LoRA-wrapped model, backend name, why Unsloth was not used or None). Unsloth first unless the recipe says
    ``backend = "peft"``; where Unsloth fails to load the base or to attach LoRA, ``auto`` falls back to PEFT (the
    reason, with the failing frame, goes into the training summary) and ``unsloth`` gives up."""
    backend = recipe["backend"]
    fallback = None
    if backend in ("auto", "unsloth"):
        try:
            model = attach_lora(load_base(load_dir, recipe, device, dtype, "unsloth"), recipe, "unsloth")
            return model, "unsloth", None
        except Exception as exc:  # Unsloth fails in many ways (no kernels, no GPU support, version drift)
            if backend == "unsloth":
                raise ModelError(f"Unsloth could not load {load_dir}: {exc}") from exc
            import traceback

            frames = traceback.extract_tb(exc.__traceback__)
            where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
            fallback = f"{type(exc).__name__}: {exc}{where}"
            log.warning("Unsloth unavailable: %s; falling back to PEFT", fallback)
            print(f"Unsloth unavailable: {fallback}; falling back to PEFT", flush=True)
    else:
        fallback = "the recipe asks for PEFT"
    return attach_lora(load_base(load_dir, recipe, device, dtype, "peft"), recipe, "peft"), "peft", fallback


def load_base(load_dir: str, recipe: dict, device: str, dtype, backend: str):
    """The base causal LM through Unsloth's ``FastLanguageModel`` or, for ``peft``, plain transformers."""
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        model, _ = FastLanguageModel.from_pretrained(
            model_name=load_dir, max_seq_length=recipe["max_seq_length"], dtype=dtype, load_in_4bit=False,
            full_finetuning=False, local_files_only=True, tokenizer_name=tokenizer_with_own_pad(load_dir))
        return model
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(load_dir, dtype=dtype).to(device)


# Pad tokens that are ordinary vocabulary entries of the families screener trains (Qwen2.5 first).
PAD_CANDIDATES = ("<|fim_pad|>", "<|vision_pad|>", "<|finetune_right_pad_id|>", "<pad>", "[PAD]")


def tokenizer_with_own_pad(load_dir: str) -> str:
    """Where Unsloth should read the tokenizer. Unsloth refuses a pad token equal to EOS and looks for a
    replacement only among a tokenizer's added tokens; a tokenizer rebuilt from a GGUF (Qwen2.5's) has
    ``<|fim_pad|>`` in its vocabulary but not among them, so Unsloth gives up. Such a tokenizer gets that token as
    its pad in a copy written beside the base; the model's vocabulary is unchanged. Padding is never attended to
    or trained on, so which id pads does not matter."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(load_dir)
    if tokenizer.pad_token is not None and tokenizer.pad_token != tokenizer.eos_token:
        return load_dir
    vocab = tokenizer.get_vocab()
    pad = next((t for t in PAD_CANDIDATES if t in vocab and t != tokenizer.eos_token), None)
    if pad is None:
        return load_dir
    target = Path(load_dir).parent / (Path(load_dir).name + ".unsloth-tokenizer")
    if not (target / "tokenizer_config.json").is_file():
        tokenizer.pad_token = pad
        staging = target.with_name(target.name + f".tmp{os.getpid()}")
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another trainer wrote it first
            shutil.rmtree(staging)
    return str(target)


def attach_lora(model, recipe: dict, backend: str):
    """``model`` with the recipe's LoRA adapter (and gradient checkpointing if asked), ready to train."""
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        model = FastLanguageModel.get_peft_model(
            model, r=recipe["lora_r"], lora_alpha=recipe["lora_alpha"], lora_dropout=recipe["lora_dropout"],
            target_modules=recipe["target_modules"], bias="none",
            use_gradient_checkpointing="unsloth" if recipe["gradient_checkpointing"] else False,
            random_state=recipe["seed"], max_seq_length=recipe["max_seq_length"])
        FastLanguageModel.for_training(model)
        return model
    from peft import LoraConfig, get_peft_model

    if recipe["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    config = LoraConfig(r=recipe["lora_r"], lora_alpha=recipe["lora_alpha"], lora_dropout=recipe["lora_dropout"],
                        target_modules=recipe["target_modules"], bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    model.train()
    return model


def trainable_in_fp32(model) -> list:
    """The trainable parameters, held in fp32: low-precision training keeps the LoRA weights (the only ones
    updated) in fp32, and autocast does the rest."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.data = p.data.float()
    return trainable


@dataclass(frozen=True)
class Examples:
    """The encoded training rows for the recipe's objective."""

    rows: list[list[int]]
    targets: list[int] | None  # label-token: each row's class index
    response_starts: list[int] | None  # causal-lm: where each row's response, the tokens the loss is on, starts
    lengths: list[int]


def max_text_tokens(recipe: dict) -> int:
    """Tokens kept of each text: the sequence length less room for the prompt around it."""
    return max(8, recipe["max_seq_length"] - 96)


def encode_examples(tokenizer, texts: Sequence[str], labels: Sequence[int], recipe: dict, instruction: str,
                    label_ids: tuple[int, ...]):
    """Token rows, per-row targets and loss masks for the recipe's objective."""
    prompts = prompt_token_ids(tokenizer, texts, instruction, max_text_tokens(recipe))
    if recipe["objective"] == "label-token":
        # Labels are class indices into the label words, so into label_ids too.
        return prompts, [int(y) for y in labels], None
    eos = tokenizer.eos_token_id
    words = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in recipe["label_words"]]
    rows, response_starts = [], []
    for prompt, y in zip(prompts, labels):
        response = words[int(y)] + ([eos] if eos is not None else [])
        rows.append(prompt + response)
        response_starts.append(len(prompt))
    return rows, None, response_starts


def build_dataset(tokenizer, texts: Sequence[str], labels: Sequence[int], recipe: dict, instruction: str,
                  label_ids: tuple[int, ...]) -> Examples:
    rows, targets, response_starts = encode_examples(tokenizer, texts, labels, recipe, instruction, label_ids)
    return Examples(rows, targets, response_starts, [len(r) for r in rows])


def batch_order(lengths: Sequence[int], batch_size: int, length_grouped: bool, rng: random.Random) -> list[list[int]]:
    """One epoch of batches. Length-grouped: shuffled, sorted by length within pools of 50 batches, batch order
    shuffled again, so padding nearly vanishes while each batch stays a random draw of similar lengths."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    if not length_grouped:
        return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    pool = batch_size * 50
    batches = []
    for start in range(0, len(idx), pool):
        chunk = sorted(idx[start:start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def endless_batches(lengths: Sequence[int], batch_size: int, length_grouped: bool, rng: random.Random):
    """Micro-batches of row indices, epoch after epoch."""
    while True:
        yield from batch_order(lengths, batch_size, length_grouped, rng)


def lr_lambda(scheduler: str, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        if scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)
    return factor


def step_count(recipe: dict, n_rows: int, max_steps: int | None) -> int:
    """Optimizer steps to run: ``max_steps`` if given, else the recipe's, else its epochs over the rows."""
    steps_per_epoch = math.ceil(n_rows / (recipe["batch_size"] * recipe["grad_accum"]))
    return max_steps or recipe["max_steps"] or math.ceil(recipe["epochs"] * steps_per_epoch)


def graphs_usable(recipe: dict, device, data: Examples, scaler) -> bool:
    """Whether the recipe's ``cuda_graphs`` can be honoured here; where it cannot, the log says so."""
    usable = (recipe["cuda_graphs"] and device.type == "cuda" and data.targets is not None
              and recipe["grad_accum"] == 1 and scaler is None)
    if recipe["cuda_graphs"] and not usable:
        log.warning("cuda_graphs needs a CUDA device, the label-token objective, grad_accum = 1 and bf16 or fp32; "
                    "training eagerly")
    return usable


def make_optimizer(trainable: list, recipe: dict, factor, graphed: bool, device):
    import torch

    if graphed:
        # A captured optimizer step reads its learning rate from device memory, updated in place every step.
        return torch.optim.AdamW(trainable, lr=torch.tensor(recipe["learning_rate"] * factor(0), device=device),
                                 weight_decay=recipe["weight_decay"], fused=True, capturable=True)
    return torch.optim.AdamW(trainable, lr=recipe["learning_rate"], weight_decay=recipe["weight_decay"],
                             fused=device.type == "cuda")


@dataclass
class TrainedRun:
    """What one training run did: steps, examples and tokens seen, the loss every 50 steps, its duration."""

    steps: int
    examples: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    loss_log: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    cuda_graphs: dict | None = None

    def count(self, lengths: Sequence[int], idx: list[int], padded_tokens: int) -> None:
        self.real_tokens += sum(lengths[i] for i in idx)
        self.padded_tokens += padded_tokens
        self.examples += len(idx)


def train_adapter(model, trainable: list, data: Examples, recipe: dict, dtype, label_ids: tuple[int, ...],
                  pad_id: int, max_steps: int | None) -> TrainedRun:
    """Train the LoRA weights on ``data`` for :func:`step_count` steps, eagerly or as replayed CUDA graphs."""
    import torch

    model_device = next(model.parameters()).device
    total_steps = step_count(recipe, len(data.rows), max_steps)
    use_autocast = model_device.type == "cuda" and dtype != torch.float32
    scaler = torch.amp.GradScaler("cuda") if use_autocast and dtype == torch.float16 else None
    use_graphs = graphs_usable(recipe, model_device, data, scaler)
    factor = lr_lambda(recipe["lr_scheduler"], recipe["warmup_steps"], total_steps)
    optimizer = make_optimizer(trainable, recipe, factor, use_graphs, model_device)
    micro = recipe["batch_size"]
    batches = endless_batches(data.lengths, micro, recipe["length_grouped"], random.Random(recipe["seed"]))
    model.train()
    run = TrainedRun(steps=total_steps)
    loss_sum = torch.zeros((), device=model_device)
    if use_graphs:
        graphed, eager = GraphedLabelTokenSteps(model, optimizer, label_ids, dtype, micro, pad_id), None
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        graphed, eager = None, EagerSteps(model, optimizer, scheduler, scaler, data, recipe["grad_accum"], dtype,
                                          use_autocast, label_ids, pad_id)
    if model_device.type == "cuda":
        torch.cuda.synchronize()
    t_train = time.perf_counter()
    for step in range(total_steps):
        if graphed is not None:
            idx = next(batches)
            optimizer.param_groups[0]["lr"].fill_(recipe["learning_rate"] * factor(step))
            loss_sum += graphed.step([data.rows[i] for i in idx], [data.targets[i] for i in idx])
            run.count(data.lengths, idx, graphed.last_width * micro)
        else:
            eager.step(batches, run, loss_sum)
        if (step + 1) % 50 == 0 or step + 1 == total_steps:
            mean = (loss_sum / ((step % 50) + 1)).item()
            run.loss_log.append({"step": step + 1, "loss": round(mean, 5)})
            log.info("step %d/%d loss %.4f", step + 1, total_steps, mean)
            loss_sum.zero_()
    if model_device.type == "cuda":
        torch.cuda.synchronize()
    run.seconds = time.perf_counter() - t_train
    if graphed is not None:
        run.cuda_graphs = {"widths": sorted(graphed.graphs), "eager_steps": graphed.eager_steps,
                           "capture_failed": graphed.disabled}
        graphed.release()
    return run


class EagerSteps:
    """Training steps run operation by operation: ``accum`` micro-batches of gradients, then one optimizer step.

    The loss is the recipe objective's: cross-entropy over the label tokens' logits (rows with ``targets``) or
    next-token cross-entropy on each row's response.
    """

    def __init__(self, model, optimizer, scheduler, scaler, data: Examples, accum: int, dtype, use_autocast: bool,
                 label_ids: tuple[int, ...], pad_id: int):
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.data, self.accum, self.dtype, self.use_autocast = data, accum, dtype, use_autocast
        self.label_ids, self.pad_id = label_ids, pad_id
        self.device = next(model.parameters()).device

    def step(self, batches, run: TrainedRun, loss_sum) -> None:
        """One optimizer step over the next ``accum`` micro-batches; their losses are added to ``loss_sum``."""
        for _ in range(self.accum):
            idx = next(batches)
            ids, lens = pad_batch([self.data.rows[i] for i in idx], self.pad_id)
            ids = ids.to(self.device, non_blocking=True)
            lens = lens.to(self.device, non_blocking=True)
            run.count(self.data.lengths, idx, ids.numel())
            loss = self.loss(idx, ids, lens) / self.accum
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            loss_sum += loss.detach()
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def loss(self, idx: list[int], ids, lens):
        import torch

        data = self.data
        with torch.autocast(device_type=self.device.type, dtype=self.dtype, enabled=self.use_autocast):
            if data.targets is not None:
                y = torch.as_tensor([data.targets[i] for i in idx], device=self.device)
                return torch.nn.functional.cross_entropy(label_logits(self.model, ids, lens, self.label_ids), y)
            lab = torch.full_like(ids, -100)
            for j, i in enumerate(idx):
                lab[j, data.response_starts[i]:data.lengths[i]] = ids[j, data.response_starts[i]:data.lengths[i]]
            return self.model(input_ids=ids, labels=lab).loss


def summarize_run(base: str, recipe: dict, backend: str, model, trainable: list, dtype, data: Examples,
                  run: TrainedRun) -> dict:
    """The figures ``training_summary.json`` keeps: where and how it trained, throughput and the loss curve."""
    import torch

    model_device = next(model.parameters()).device
    n_params = sum(p.numel() for p in model.parameters())
    n_rows = len(data.rows)
    return {
        "base": base, "recipe": recipe.get("name"), "recipe_settings": recipe,
        "backend": backend, "device": str(model_device),
        "gpu": torch.cuda.get_device_name(model_device) if model_device.type == "cuda" else None,
        "dtype": str(dtype).replace("torch.", ""), "steps": run.steps, "examples_seen": run.examples,
        "train_rows": n_rows, "epochs": round(run.examples / n_rows, 4), "train_seconds": round(run.seconds, 3),
        "real_tokens": run.real_tokens, "padded_tokens": run.padded_tokens,
        "tokens_per_s": round(run.real_tokens / run.seconds, 1),
        "params": n_params, "trainable_params": sum(p.numel() for p in trainable),
        # The usual 6 * params * tokens estimate of training FLOPs (forward 2, backward 4), on real tokens.
        "model_flops": 6 * n_params * run.real_tokens,
        "share_of_bf16_peak": round(6 * n_params * run.real_tokens / run.seconds / BF16_PEAK_FLOPS, 4),
        "loss_log": run.loss_log, "torch": torch.__version__,
        "cuda_graphs": run.cuda_graphs,
    }


def write_manifest(output: Path, base: str, ref: BaseRef, recipe: dict, instruction: str,
                   label_ids: tuple[int, ...]) -> None:
    """``screener_model.json``: what ``screener.classifiers.llm`` needs to score with the adapter."""
    manifest = {
        "kind": "llm-labeltoken", "name": output.name, "base": base, "adapter": "adapter",
        "instruction": instruction, "label_words": list(recipe["label_words"]), "label_token_ids": list(label_ids),
        "max_text_tokens": max_text_tokens(recipe),
    }
    if ref.identity.startswith("sha256:"):
        manifest["base_sha256"] = ref.identity[len("sha256:"):]
    if ref.revision:
        manifest["revision"] = ref.revision
    (output / "screener_model.json").write_text(json.dumps(manifest, indent=2) + "\n")


def fixed_shape_batch(rows: list[list[int]], targets: list[int], n_rows: int, pad_id: int, multiple: int):
    """(ids, lengths, targets, weights) padded to ``n_rows`` rows and a width in multiples of ``multiple``.

    Extra rows repeat the first one with weight zero, so a short batch fits a graph captured for full ones.
    """
    import torch

    ids, lens = pad_batch(rows, pad_id, multiple)
    n = len(rows)
    if n < n_rows:
        ids = torch.cat([ids, ids[:1].expand(n_rows - n, -1)])
        lens = torch.cat([lens, lens[:1].expand(n_rows - n)])
        targets = list(targets) + [targets[0]] * (n_rows - n)
    weights = torch.zeros(n_rows)
    weights[:n] = 1.0
    return ids, lens, torch.as_tensor(targets, dtype=torch.long), weights


def weighted_cross_entropy(logits, targets, weights):
    """Mean cross-entropy over the rows of weight one (the weights are 0 or 1)."""
    import torch

    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    return (ce * weights).sum() / weights.sum()


class GraphedLabelTokenSteps:
    """Whole training steps (forward, label-token loss, backward, AdamW) replayed as CUDA graphs.

    A small model's step is bound by launching its many small kernels one by one from Python, not by arithmetic;
    a captured step launches them all at once. Batches are padded to widths in multiples of 16 and to a fixed row
    count (extra rows weigh zero in the loss), so a handful of graphs, one per width, covers an epoch. The first
    two batches of each width run eagerly on a side stream (they warm up kernels and lazily created state, and
    train like any step); the third is captured and every later one replayed.
    """

    WIDTH_MULTIPLE = 16
    WARMUP = 2

    def __init__(self, model, optimizer, label_ids, dtype, rows: int, pad_id: int):
        import torch

        self.model, self.optimizer, self.dtype, self.rows, self.pad_id = model, optimizer, dtype, rows, pad_id
        self.device = next(model.parameters()).device
        # A device tensor: label_logits must not copy from the host while a graph is being captured.
        self.label_ids = torch.as_tensor(label_ids, device=self.device)
        self.graphs: dict[int, tuple] = {}
        self.seen: dict[int, int] = {}
        self.eager_steps = 0
        self.disabled: str | None = None
        self.last_width = 0
        self.side = torch.cuda.Stream(device=self.device)

    def _loss(self, ids, lens, y, w):
        import torch

        with torch.autocast(device_type="cuda", dtype=self.dtype, enabled=self.dtype != torch.float32,
                            cache_enabled=False):
            logits = label_logits(self.model, ids, lens, self.label_ids)
        return weighted_cross_entropy(logits, y, w)

    def _host_batch(self, rows: list[list[int]], targets: list[int]):
        return tuple(t.pin_memory() for t in fixed_shape_batch(rows, targets, self.rows, self.pad_id,
                                                                self.WIDTH_MULTIPLE))

    def step(self, rows: list[list[int]], targets: list[int]):
        import torch

        host = self._host_batch(rows, targets)
        width = host[0].shape[1]
        self.last_width = width
        if width in self.graphs:
            graph, static, loss = self.graphs[width]
            for dst, src in zip(static, host):
                dst.copy_(src, non_blocking=True)
            graph.replay()
            return loss.detach().clone()
        batch = [t.to(self.device, non_blocking=True) for t in host]
        self.seen[width] = self.seen.get(width, 0) + 1
        if self.disabled is None and self.seen[width] > self.WARMUP:
            try:
                return self._capture_and_run(width, batch)
            except RuntimeError as exc:  # e.g. a kernel that synchronizes; the eager step below still trains
                self.disabled = f"{type(exc).__name__}: {exc}"
                log.warning("CUDA graph capture failed (%s); training eagerly from here", self.disabled)
                torch.cuda.synchronize()
        self.eager_steps += 1
        # Captured graphs leave .grad pointing into their own buffers: an eager backward must start from None,
        # or it would add to them.
        self.optimizer.zero_grad(set_to_none=True)
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            loss = self._loss(*batch)
            loss.backward()
            self.optimizer.step()
        torch.cuda.current_stream().wait_stream(self.side)
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def _capture_and_run(self, width: int, batch):
        import torch

        torch.cuda.synchronize()
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = self._loss(*batch)
            loss.backward()
            self.optimizer.step()
        self.graphs[width] = (graph, batch, loss)
        graph.replay()  # capturing records the step without running it
        return loss.detach().clone()

    def release(self) -> None:
        import torch

        torch.cuda.synchronize()
        self.graphs.clear()
        self.optimizer.zero_grad(set_to_none=True)


def save_adapter(model, folder: Path) -> None:
    """PEFT adapter files, weights stored in bf16: half the size, and bf16 is what a GPU scores in."""
    import torch
    from safetensors.torch import load_file, save_file

    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    weights = folder / "adapter_model.safetensors"
    state = load_file(str(weights))
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}, str(weights),
              metadata={"format": "pt"})
    readme = folder / "README.md"
    if readme.exists():
        readme.unlink()
