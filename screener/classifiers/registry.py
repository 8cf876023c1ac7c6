"""Resolve a model name or folder to a loaded classifier.

A model folder holds ``screener_model.json`` with at least ``{"kind": ...}``; the kind names the module that loads
it. Shipped models live in ``screener/models/<name>/``; ``default`` is the CPU model ``screener scan`` uses.

A backend chooses how a model runs (``settings.BACKENDS``): ``torch`` everywhere; ``onnx`` (at the model's own
precision), ``onnx-fp32`` or ``onnx-int8``, ONNX Runtime on the CPU, for the kinds in ``CPU_BACKENDS``; ``auto``
takes ONNX Runtime where it is installed and the model runs on a CPU without bf16 matrix units, and torch otherwise
(and where the ONNX export cannot be built, with a warning). The Python API's default is torch; ``screener scan``'s
(the ``backend`` setting) is auto.
"""

from __future__ import annotations

import importlib
import json
import logging
from importlib import resources
from pathlib import Path

from screener.classifiers.gpu.fast_paths import FastPaths
from screener.errors import ModelError

log = logging.getLogger(__name__)

MANIFEST = "screener_model.json"
DEFAULT_MODEL = "default"

# kind -> module with a ``load(folder: Path, manifest: dict, device: str) -> Classifier`` function (for
# llm-labeltoken the GPU engine's loader, which picks the engine on CUDA and the reference classifier elsewhere)
LOADERS = {
    "hf-seqcls": "screener.classifiers.hf",
    "llm-labeltoken": "screener.classifiers.gpu.loader",
}
# kind -> module of its ONNX Runtime backend, with ``select(backend, device, manifest) -> precision | None`` (None:
# run torch) and ``load(folder, manifest, device, precision, threads) -> Classifier``
CPU_BACKENDS = {
    "hf-seqcls": "screener.classifiers.onnx",
}
# Kinds whose torch loader takes ``threads`` (intra-op threads on the CPU; 0: one per core).
THREADED = {"hf-seqcls"}
# Kinds whose loader takes the GPU engine's ``fast_paths`` (screener.classifiers.gpu.fast_paths).
FAST_PATHS = {"llm-labeltoken"}


def shipped_models_dir() -> Path:
    return Path(str(resources.files("screener") / "models"))


def shipped_model_names() -> list[str]:
    root = shipped_models_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file())


def resolve_model_dir(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            raise ModelError(
                f"model folder {path} has no {MANIFEST}: expected a folder written by `screener train` "
                f"or one of the shipped models ({', '.join(shipped_model_names()) or 'none installed'})"
            )
        return path
    shipped = shipped_models_dir() / name_or_path
    if (shipped / MANIFEST).is_file():
        return shipped
    raise ModelError(
        f"unknown model {name_or_path!r}: expected a shipped model name "
        f"({', '.join(shipped_model_names()) or 'none installed'}) or a folder with {MANIFEST}; "
        "run `screener models` to list them"
    )


def read_manifest(folder: Path) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {folder / MANIFEST}: {exc}") from exc
    if manifest.get("kind") not in LOADERS:
        raise ModelError(
            f"{folder / MANIFEST}: kind {manifest.get('kind')!r} is not one of {sorted(LOADERS)}"
        )
    return manifest


def load_classifier(name_or_path: str = DEFAULT_MODEL, device: str = "auto", backend: str = "torch",
                    threads: int = 0, fast_paths: FastPaths = FastPaths()):
    """The classifier for a model name or folder; ``fast_paths`` are the GPU engine's (``FAST_PATHS`` kinds on
    CUDA; elsewhere ignored with a warning)."""
    folder = resolve_model_dir(name_or_path)
    manifest = read_manifest(folder)
    kind = manifest["kind"]
    if kind not in FAST_PATHS:
        fast_paths = fast_paths.ignored(f"they speed up {', '.join(sorted(FAST_PATHS))} models on CUDA, and "
                                        f"{folder} is a {kind!r} model")
    if backend != "torch":
        if kind in CPU_BACKENDS:
            runtime = importlib.import_module(CPU_BACKENDS[kind])
            precision = runtime.select(backend, device, manifest)
            if precision is not None:
                try:
                    return runtime.load(folder, manifest, device="cpu", precision=precision, threads=threads)
                except ModelError as exc:
                    if backend != "auto":
                        raise
                    log.warning("ONNX Runtime cannot run %s, scoring with torch instead: %s", folder, exc)
        elif backend != "auto":
            raise ModelError(f"--backend {backend} runs {sorted(CPU_BACKENDS)} models; {folder} is a {kind!r} model: "
                             "use --backend torch or auto")
    module = importlib.import_module(LOADERS[kind])
    if kind in THREADED:
        return module.load(folder, manifest, device=device, threads=threads)
    if kind in FAST_PATHS:
        return module.load(folder, manifest, device=device, fast_paths=fast_paths)
    return module.load(folder, manifest, device=device)
