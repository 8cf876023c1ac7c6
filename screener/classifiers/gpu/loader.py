"""Loading ``llm-labeltoken`` model folders: the GPU engine on CUDA, the reference classifier elsewhere.

``load`` is the kind's loader in ``screener.classifiers.registry``. It sits above both classifiers, so neither
imports the other. The engine's fast paths (``fast_paths``) apply on CUDA only; elsewhere, and for model types the
engine does not run, they are ignored with a warning.
"""

from __future__ import annotations

import functools
from pathlib import Path

from screener.classifiers import llm
from screener.classifiers.device import resolve_device
from screener.classifiers.gpu import fp8
from screener.classifiers.gpu.fast_paths import FastPaths
from screener.classifiers.gpu.multi import MultiGPUEngine
from screener.classifiers.gpu.runner import SUPPORTED_MODEL_TYPES, LabelTokenEngine
from screener.prompt import DEFAULT_MAX_TEXT_TOKENS, INSTRUCTION, LABEL_WORDS


def build_engine(folder: Path, manifest: dict, device: str, *, name: str, model_id: str,
                 fast_paths: FastPaths = FastPaths()):
    """A classifier on one device for a model folder, loaded by the reference classifier's loader: the engine, or
    the reference classifier for model types the engine does not support."""
    import torch

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model, tokenizer, label_ids = llm.load_model_and_tokenizer(folder, manifest, device, dtype)
    instruction = manifest.get("instruction", INSTRUCTION)
    max_text_tokens = int(manifest.get("max_text_tokens", DEFAULT_MAX_TEXT_TOKENS))
    labels = manifest.get("label_words", LABEL_WORDS)
    if model.config.model_type not in SUPPORTED_MODEL_TYPES:
        fast_paths.ignored(f"the GPU engine runs model types {', '.join(SUPPORTED_MODEL_TYPES)}, and {folder} is "
                           f"a {model.config.model_type!r} model, scored by the reference classifier")
        return llm.LabelTokenClassifier(model, tokenizer, label_ids, name=name, model_id=model_id, device=device,
                                        instruction=instruction, max_text_tokens=max_text_tokens, labels=labels)
    return LabelTokenEngine(model, tokenizer, label_ids, instruction, name=name, model_id=model_id,
                            max_text_tokens=max_text_tokens, labels=labels, **fast_paths.engine_options())


def load_engine(folder: Path, manifest: dict, device: str = "cuda", *, name: str, model_id: str,
                fast_paths: FastPaths = FastPaths()):
    """One engine on the named device, or, for ``cuda``, one worker process per visible GPU when there are
    several. A GPU that cannot run ``fast_paths.fp8`` fails here, before any weights load."""
    import torch

    devices = [device]
    if device == "cuda" and torch.cuda.device_count() > 1:
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if fast_paths.fp8:
        for each in devices:
            fp8.check_device(each)
    build = functools.partial(build_engine, Path(folder), manifest, name=name, model_id=model_id,
                              fast_paths=fast_paths)
    if len(devices) > 1:
        return MultiGPUEngine(build, devices)
    return build(device)


def load(folder: Path, manifest: dict, device: str = "auto", fast_paths: FastPaths = FastPaths()):
    """The classifier the scan uses for an ``llm-labeltoken`` folder: the GPU engine on CUDA, the reference
    classifier elsewhere."""
    folder = Path(folder)
    device = resolve_device(device)
    if device.startswith("cuda"):
        return load_engine(folder, manifest, device, name=manifest.get("name", folder.name),
                           model_id=llm.manifest_model_id(folder, manifest), fast_paths=fast_paths)
    fast_paths.ignored(f"the GPU engine's fast paths run on CUDA, and this model runs on {device}")
    return llm.load_reference(folder, manifest, device)
