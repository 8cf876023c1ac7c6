"""LoRA fine-tuning of causal LMs for the label-token classifier: Unsloth's FastLanguageModel, PEFT as fallback.

Two objectives (a recipe's ``objective``):

- ``causal-lm``: the paper's. Each example is the Alpaca prompt followed by the label word and the end-of-text
  token; next-token cross-entropy on those response tokens only.
- ``label-token``: what the classifier is scored with. Cross-entropy over the logits of the two label tokens at
  the last prompt position (the output head restricted to two rows), nothing else.

The output folder holds ``adapter/`` (PEFT LoRA weights), ``screener_model.json`` (kind ``llm-labeltoken``) and
``training_summary.json``; ``screener.classifiers.registry.load_classifier(folder)`` loads it.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Sequence

from screener.classifiers.llm import (BaseRef, dequantized_dir, label_logits, load_tokenizer, pad_batch,
                                      prompt_token_ids, resolve_device)
from screener.errors import ConfigError, ModelError
from screener.prompt import INSTRUCTION, LABEL_WORDS, label_token_ids

log = logging.getLogger(__name__)

BF16_PEAK_FLOPS = 790e12  # dense bf16 matrix product measured on one H200 (device notes), the share's baseline


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


def load_for_training(load_dir: str, recipe: dict, device: str, dtype):
    """(LoRA-wrapped model, backend name). Unsloth first unless the recipe says ``backend = "peft"``."""
    backend = recipe["backend"]
    if backend in ("auto", "unsloth"):
        try:
            from unsloth import FastLanguageModel

            model, _ = FastLanguageModel.from_pretrained(
                model_name=load_dir, max_seq_length=recipe["max_seq_length"], dtype=dtype, load_in_4bit=False,
                full_finetuning=False, local_files_only=True)
            model = FastLanguageModel.get_peft_model(
                model, r=recipe["lora_r"], lora_alpha=recipe["lora_alpha"], lora_dropout=recipe["lora_dropout"],
                target_modules=recipe["target_modules"], bias="none",
                use_gradient_checkpointing="unsloth" if recipe["gradient_checkpointing"] else False,
                random_state=recipe["seed"], max_seq_length=recipe["max_seq_length"])
            FastLanguageModel.for_training(model)
            return model, "unsloth"
        except Exception as exc:  # Unsloth fails in many ways (no kernels, no GPU support, version drift)
            if backend == "unsloth":
                raise ModelError(f"Unsloth could not load {load_dir}: {exc}") from exc
            log.warning("Unsloth unavailable: %s: %s; falling back to PEFT", type(exc).__name__, exc)
            print(f"Unsloth unavailable: {type(exc).__name__}: {exc}; falling back to PEFT", flush=True)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(load_dir, dtype=dtype).to(device)
    if recipe["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    config = LoraConfig(r=recipe["lora_r"], lora_alpha=recipe["lora_alpha"], lora_dropout=recipe["lora_dropout"],
                        target_modules=recipe["target_modules"], bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    model.train()
    return model, "peft"


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


def encode_examples(tokenizer, texts: Sequence[str], labels: Sequence[int], recipe: dict, instruction: str,
                    label_ids: tuple[int, int]):
    """Token rows, per-row targets and loss masks for the recipe's objective."""
    max_text = max(8, recipe["max_seq_length"] - 96)
    prompts = prompt_token_ids(tokenizer, texts, instruction, max_text)
    if recipe["objective"] == "label-token":
        # SST-2 labels are already class indices into label_ids: 0 = negative, 1 = positive.
        return prompts, [int(y) for y in labels], None
    eos = tokenizer.eos_token_id
    words = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in LABEL_WORDS]
    rows, response_starts = [], []
    for prompt, y in zip(prompts, labels):
        response = words[0 if int(y) == 0 else 1] + ([eos] if eos is not None else [])
        rows.append(prompt + response)
        response_starts.append(len(prompt))
    return rows, None, response_starts


def train_llm(base: str, recipe: dict, texts: Sequence[str], labels: Sequence[int], output: str | Path,
              max_steps: int | None = None, device: str = "auto") -> dict:
    """Fine-tune ``base`` with LoRA per ``recipe`` on (texts, labels) and write a classifier folder to ``output``."""
    if recipe.get("kind") != "llm-lora":
        raise ConfigError(f"recipe {recipe.get('name')!r} has kind {recipe.get('kind')!r}; expected 'llm-lora'")
    if len(texts) != len(labels) or not texts:
        raise ConfigError(f"expected equal, non-zero numbers of texts and labels, got {len(texts)} and {len(labels)}")
    t_start = time.perf_counter()
    device = resolve_device(device)
    if recipe["backend"] != "peft":
        # Unsloth patches transformers when imported; it must come first.
        try:
            import unsloth  # noqa: F401
        except Exception:  # reported by load_for_training, which decides whether to fall back
            pass
    import torch

    random.seed(recipe["seed"])
    torch.manual_seed(recipe["seed"])
    ref, load_dir = prepare_base(base)
    dtype = training_dtype(recipe["precision"], device)
    model, backend = load_for_training(load_dir, recipe, device, dtype)
    tokenizer = load_tokenizer(ref)
    label_ids = label_token_ids(tokenizer)
    instruction = recipe["instruction"] or INSTRUCTION
    model_device = next(model.parameters()).device
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        # Low-precision training keeps the LoRA weights (the only ones updated) in fp32; autocast does the rest.
        p.data = p.data.float()
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in trainable)

    rows, targets, response_starts = encode_examples(tokenizer, texts, labels, recipe, instruction, label_ids)
    lengths = [len(r) for r in rows]
    micro = recipe["batch_size"]
    accum = recipe["grad_accum"]
    steps_per_epoch = math.ceil(len(rows) / (micro * accum))
    total_steps = max_steps or recipe["max_steps"] or math.ceil(recipe["epochs"] * steps_per_epoch)

    use_autocast = model_device.type == "cuda" and dtype != torch.float32
    scaler = torch.amp.GradScaler("cuda") if use_autocast and dtype == torch.float16 else None
    use_graphs = (recipe["cuda_graphs"] and model_device.type == "cuda" and targets is not None and accum == 1
                  and scaler is None)
    if recipe["cuda_graphs"] and not use_graphs:
        log.warning("cuda_graphs needs a CUDA device, the label-token objective, grad_accum = 1 and bf16 or fp32; "
                    "training eagerly")
    fused = model_device.type == "cuda"
    factor = lr_lambda(recipe["lr_scheduler"], recipe["warmup_steps"], total_steps)
    if use_graphs:
        # A captured optimizer step reads its learning rate from device memory, updated in place every step.
        optimizer = torch.optim.AdamW(trainable, lr=torch.tensor(recipe["learning_rate"] * factor(0),
                                                                 device=model_device),
                                      weight_decay=recipe["weight_decay"], fused=True, capturable=True)
    else:
        optimizer = torch.optim.AdamW(trainable, lr=recipe["learning_rate"], weight_decay=recipe["weight_decay"],
                                      fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor) if not use_graphs else None
    rng = random.Random(recipe["seed"])
    pad_id = tokenizer.pad_token_id

    def micro_batches():
        while True:
            yield from batch_order(lengths, micro, recipe["length_grouped"], rng)

    batches = micro_batches()
    model.train()
    real_tokens = padded_tokens = examples = 0
    loss_sum = torch.zeros((), device=model_device)
    loss_log = []
    graphed = GraphedLabelTokenSteps(model, optimizer, label_ids, dtype, micro, pad_id) if use_graphs else None
    if model_device.type == "cuda":
        torch.cuda.synchronize()
    t_train = time.perf_counter()
    for step in range(total_steps):
        if graphed is not None:
            idx = next(batches)
            optimizer.param_groups[0]["lr"].fill_(recipe["learning_rate"] * factor(step))
            loss_sum += graphed.step([rows[i] for i in idx], [targets[i] for i in idx])
            real_tokens += sum(lengths[i] for i in idx)
            padded_tokens += graphed.last_width * micro
            examples += len(idx)
        else:
            for _ in range(accum):
                idx = next(batches)
                ids, lens = pad_batch([rows[i] for i in idx], pad_id)
                ids = ids.to(model_device, non_blocking=True)
                lens = lens.to(model_device, non_blocking=True)
                real_tokens += sum(lengths[i] for i in idx)
                padded_tokens += ids.numel()
                examples += len(idx)
                with torch.autocast(device_type=model_device.type, dtype=dtype, enabled=use_autocast):
                    if targets is not None:
                        y = torch.as_tensor([targets[i] for i in idx], device=model_device)
                        loss = torch.nn.functional.cross_entropy(label_logits(model, ids, lens, label_ids), y)
                    else:
                        lab = torch.full_like(ids, -100)
                        for j, i in enumerate(idx):
                            lab[j, response_starts[i]:lengths[i]] = ids[j, response_starts[i]:lengths[i]]
                        loss = model(input_ids=ids, labels=lab).loss
                loss = loss / accum
                (scaler.scale(loss) if scaler else loss).backward()
                loss_sum += loss.detach()
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        if (step + 1) % 50 == 0 or step + 1 == total_steps:
            mean = (loss_sum / ((step % 50) + 1)).item()
            loss_log.append({"step": step + 1, "loss": round(mean, 5)})
            log.info("step %d/%d loss %.4f", step + 1, total_steps, mean)
            loss_sum.zero_()
    if model_device.type == "cuda":
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - t_train

    output = Path(output)
    graph_info = None
    if graphed is not None:
        graph_info = {"widths": sorted(graphed.graphs), "eager_steps": graphed.eager_steps,
                      "capture_failed": graphed.disabled}
        graphed.release()
    save_adapter(model, output / "adapter")
    summary = {
        "base": base, "recipe": recipe["name"] if "name" in recipe else None, "recipe_settings": recipe,
        "backend": backend, "device": str(model_device),
        "gpu": torch.cuda.get_device_name(model_device) if model_device.type == "cuda" else None,
        "dtype": str(dtype).replace("torch.", ""), "steps": total_steps, "examples_seen": examples,
        "train_rows": len(rows), "epochs": round(examples / len(rows), 4), "train_seconds": round(train_seconds, 3),
        "real_tokens": real_tokens, "padded_tokens": padded_tokens,
        "tokens_per_s": round(real_tokens / train_seconds, 1),
        "params": n_params, "trainable_params": n_trainable,
        # The usual 6 * params * tokens estimate of training FLOPs (forward 2, backward 4), on real tokens.
        "model_flops": 6 * n_params * real_tokens,
        "share_of_bf16_peak": round(6 * n_params * real_tokens / train_seconds / BF16_PEAK_FLOPS, 4),
        "loss_log": loss_log, "torch": torch.__version__,
        "cuda_graphs": graph_info,
    }
    manifest = {
        "kind": "llm-labeltoken", "name": output.name, "base": base, "adapter": "adapter",
        "instruction": instruction, "label_words": list(LABEL_WORDS), "label_token_ids": list(label_ids),
        "max_text_tokens": max(8, recipe["max_seq_length"] - 96),
    }
    if ref.identity.startswith("sha256:"):
        manifest["base_sha256"] = ref.identity[len("sha256:"):]
    if ref.revision:
        manifest["revision"] = ref.revision
    (output / "screener_model.json").write_text(json.dumps(manifest, indent=2) + "\n")
    summary["output"] = str(output)
    summary["seconds"] = round(time.perf_counter() - t_start, 3)
    (output / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


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

    A small model's step is bound by launching some 10^4 kernels from Python, not by arithmetic; a captured step
    launches them all at once. Batches are padded to widths in multiples of 16 and to a fixed row count (extra rows
    weigh zero in the loss), so a handful of graphs, one per width, covers an epoch. The first two batches of each
    width run eagerly on a side stream (they warm up kernels and lazily created state, and train like any step);
    the third is captured and every later one replayed.
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
