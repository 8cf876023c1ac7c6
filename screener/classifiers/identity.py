"""What makes two models the same: one fingerprint of everything that affects scores, and one model-id builder.

Scores written by one run are recognised by the next through ``model_id``, so an id must follow the content of
the weights, adapter, tokenizer and prompt, and nothing else: not the folder a model sits in, not the library
version that wrote its config, not the dtype it was loaded in.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from screener.errors import ModelError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "spiece.model", "sentencepiece.bpe.model")
# Keys that record where or with which library version a file was written, not what it computes.
PROVENANCE_KEYS = ("_name_or_path", "name_or_path", "transformers_version", "base_model_name_or_path", "revision",
                   "peft_version")
CONFIG_FILES = ("config.json", "adapter_config.json")

HF_SEQCLS = "hf-seqcls"
LLM_LABELTOKEN = "llm-labeltoken"
LLM_LABELTOKEN_ENGINE = "llm-labeltoken-engine"


@dataclass(frozen=True)
class Scheme:
    """Which files of a folder a fingerprint covers and how it hashes them."""

    recursive: bool  # files in subfolders too, named by their path relative to the folder
    suffixes: tuple[str, ...]  # weight files, by suffix
    names: tuple[str, ...]  # other files that affect scores, by name
    canonical_json: bool  # JSON files hashed without their provenance keys and formatting


# The files of a Hugging Face checkpoint or adapter folder, configs and tokenizer included (hf-seqcls).
CHECKPOINT = Scheme(recursive=False, suffixes=(".safetensors", ".bin"), names=CONFIG_FILES + TOKENIZER_FILES,
                    canonical_json=True)
# Every weight file and config under a folder, byte for byte (llm-labeltoken: the shipped ids were made so).
WEIGHT_TREE = Scheme(recursive=True, suffixes=(".safetensors", ".bin", ".gguf", ".pt"), names=CONFIG_FILES,
                     canonical_json=False)

# (resolved path, size, mtime_ns) -> sha256 hex: base weights are large and identical across loads.
_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, remembered for this process while the file's size and mtime stay the same."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    cached = _FILE_HASHES.get(key)
    if cached is None:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        cached = digest.hexdigest()
        _FILE_HASHES[key] = cached
    return cached


def json_sha256(path: Path) -> str:
    """sha256 of a JSON file's content without the keys that record provenance, so that the same weights written
    on two machines or by two library versions hash alike."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}; expected the JSON file written with the model") from exc
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in PROVENANCE_KEYS}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def fingerprint(source, scheme: Scheme = CHECKPOINT) -> list[tuple[str, str]]:
    """(name, sha256 hex) of each part of a model that affects its scores, in a fixed order.

    ``source`` is a folder (its files chosen and hashed by ``scheme``), a single file (a GGUF, say), or a loaded
    torch model: then each tensor is named by its parameter name and hashed from its shape and a strided sample
    of its values rounded to bf16, so that the same weights loaded in fp32 or bf16 agree and hashing stays cheap.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_file():
            return [(path.name, file_sha256(path))]
        parts = []
        for item in sorted(path.rglob("*") if scheme.recursive else path.iterdir()):
            if not item.is_file() or not (item.suffix in scheme.suffixes or item.name in scheme.names):
                continue
            name = str(item.relative_to(path))
            canonical = scheme.canonical_json and item.suffix == ".json"
            parts.append((name, json_sha256(item) if canonical else file_sha256(item)))
        return parts
    import torch

    parts = []
    for name, tensor in sorted(source.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)][:64].to(torch.bfloat16).float().cpu().numpy()
        parts.append((name, hashlib.sha256(str(tuple(tensor.shape)).encode() + sample.tobytes()).hexdigest()))
    return parts


def combined_sha256(parts: list[tuple[str, str]]) -> str:
    """One sha256 for a whole fingerprint: over each part's name and hash, in order."""
    digest = hashlib.sha256()
    for name, sha in parts:
        digest.update(name.encode())
        digest.update(sha.encode())
    return digest.hexdigest()


def model_id(kind: str, record: dict) -> str:
    """The 16-hex id of a model of ``kind`` from ``record``, everything about it that affects scores.

    Every kind hashes ``{"kind": kind, **record}`` as sorted JSON, except ``llm-labeltoken``, whose ids keep the
    formula they were first made with (so that the shipped ``smollm2-sst2`` keeps its id and its stored scores):
    ``record`` holds ``base`` (the base's identity string), ``adapter`` (its ``WEIGHT_TREE`` fingerprint or None),
    ``prompt`` (the prompt template) and ``label_words``.
    """
    if kind == LLM_LABELTOKEN:
        digest = hashlib.sha256()
        digest.update(kind.encode() + b"\x00" + record["base"].encode() + b"\x00")
        if record["adapter"] is not None:
            digest.update(combined_sha256(record["adapter"]).encode())
        digest.update(json.dumps([record["prompt"], list(record["label_words"])]).encode())
        return digest.hexdigest()[:16]
    return hashlib.sha256(json.dumps({"kind": kind, **record}, sort_keys=True).encode()).hexdigest()[:16]
