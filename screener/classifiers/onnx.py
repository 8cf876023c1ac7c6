"""Encoder classifiers (``hf-seqcls``) run by ONNX Runtime on the CPU, from an export built once and cached.

The merged model (base weights with the LoRA adapter folded in, and the head) is exported to ONNX with the softmax
inside the graph, so a session returns the class probabilities the torch path returns. The graph is the one
``screener.classifiers.onnx_graph`` writes (a BERT's last layer for the first token only, since the head reads
nothing else) with ONNX Runtime's transformer fusions, and before it is cached its probabilities on a probe batch
are checked against the torch model's: a graph that misses (by more than ``CHECK_TOLERANCE``) is replaced by the
model's own forward, checked the same way. Batches pad to their longest text only. The export and its tokenizer
are cached in ``$SCREENER_CACHE/onnx/<entry>/`` (default ``~/.cache/screener``, where split bases are joined):

- ``model.onnx``: the graph and its weights, in one file;
- ``tokenizer.json``: the fast tokenizer the torch path uses, serialized, so a load from the cache needs neither
  torch nor transformers;
- ``entry.json``: what the entry was built from (model id, precision, export options, library versions), the text
  preparation settings, the graph's form and fused operators, and the sha256 of ``model.onnx``.

The entry's name holds the model id, the precision and a hash of everything else the export depends on (its own
scheme, the opset, the quantization options, and the versions of torch, transformers, onnx, onnxscript and
onnxruntime), so an export made by another version is never read: a new one is built beside it. An entry is
written to a temporary folder and renamed into place, so a run killed while exporting, or two runs exporting at
once, never leave a half-written entry. An entry whose ``model.onnx`` no longer matches its sha256 is rebuilt.

Precision:

- ``fp32`` computes what torch computes, to float rounding: it keeps the model's id.
- ``int8``: dynamic quantization of the weight matrix products, smoothed first where the manifest gives
  ``onnx_smoothing`` and ``onnx_calibration``, the feed-forward down projections too where it gives
  ``onnx_down_smoothing`` (``screener.classifiers.onnx_int8``). A model whose manifest says
  ``"onnx_precision": "int8"`` was checked to keep its accuracy on the evaluation sets and the same demo flags (its
  model card has the figures), and keeps its id; int8 asked of a model that does not declare it is another model,
  with an id of its own (``screener scan --rescore`` is needed to switch an archive to it).

Threads: one intra-op thread per core this process may use (``os.sched_getaffinity``), or ``model_threads``; one
inter-op thread. Where the CPU has more cores than the job should take (a cron box shared with other work), set
``model_threads``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Sequence

import numpy as np

from screener.classifiers import bases, hf, identity, onnx_int8
from screener.classifiers.base import ClassifierBase
from screener.classifiers.device import cpu_threads, cpuinfo_bf16, resolve_cpu_or_cuda
from screener.errors import ModelError

log = logging.getLogger(__name__)

FP32 = "fp32"
INT8 = "int8"
PRECISIONS = (FP32, INT8)
# Bump when the export or the quantization changes in a way that changes an entry's file: old entries are then
# never read.
EXPORT_SCHEME = "onnx-export-v2"
OPSET = 18
VERSIONED = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime")
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
ENTRY_FILE = "entry.json"
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "probabilities"
# Rows and tokens of the example batch the export traces with: neither may be 0 or 1, which torch.export would
# specialize into the graph.
EXAMPLE_SHAPE = (2, 8)


def available() -> bool:
    """Whether ONNX Runtime can be imported here."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def backend_precision(backend: str, manifest: dict) -> str:
    """The precision a backend name asks for: ``onnx`` means the model's own (its manifest's ``onnx_precision``,
    default fp32), ``onnx-fp32`` and ``onnx-int8`` name one."""
    if backend in ("onnx", "auto"):
        return manifest_precision(manifest)
    return backend.removeprefix("onnx-")


def manifest_precision(manifest: dict) -> str:
    precision = manifest.get("onnx_precision", FP32)
    if precision not in PRECISIONS:
        raise ModelError(f"screener_model.json: onnx_precision must be one of {list(PRECISIONS)}, found {precision!r}")
    return precision


def select(backend: str, device: str, manifest: dict) -> str | None:
    """The precision to run the ONNX backend with, or None where the torch path runs instead.

    ``auto`` takes ONNX Runtime where it is installed and the model runs on the CPU, except on a CPU with bf16
    matrix units (AMX, AVX512-BF16), where torch's bf16 weights (``hf``'s ``cpu_bf16``) outrun an fp32 session;
    ``onnx``, ``onnx-fp32`` and ``onnx-int8`` insist, and say why they cannot run."""
    if backend == "auto":
        if not available() or resolve_cpu_or_cuda(device) != "cpu":
            return None
        precision = backend_precision(backend, manifest)
        if precision == FP32 and manifest.get("cpu_bf16", True) and cpuinfo_bf16():
            return None
        return precision
    if not available():
        raise ModelError(f"--backend {backend} needs ONNX Runtime, which is not installed here: "
                         "pip install onnxruntime onnx onnxscript, or use --backend torch")
    if resolve_cpu_or_cuda(device) != "cpu":
        raise ModelError(f"--backend {backend} runs on the CPU, but device {device!r} was asked for: use --device cpu, "
                         "or --backend torch for the GPU")
    return backend_precision(backend, manifest)


def scored_model_id(model_id: str, precision: str, manifest: dict, folder: Path) -> str:
    """The id the scores carry: the model's own for fp32 and for a declared int8, another for an undeclared int8."""
    if precision == FP32 or manifest_precision(manifest) == precision:
        return model_id
    return identity.model_id(identity.HF_SEQCLS, {"model": model_id,
                                                  "onnx_quantization": quantization(smoothing(folder, manifest)),
                                                  "graph": EXPORT_SCHEME})


def smoothing(folder: Path, manifest: dict) -> onnx_int8.Smoothing | None:
    """How the manifest asks int8 to be smoothed (``onnx_smoothing``, ``onnx_calibration`` and, for int8 down
    projections, ``onnx_down_smoothing``), checked; None where it does not."""
    alpha, calibration = manifest.get("onnx_smoothing"), manifest.get("onnx_calibration")
    down = manifest.get("onnx_down_smoothing")
    where = f"{folder}/screener_model.json"
    if alpha is None and calibration is None:
        if down is not None:
            raise ModelError(f"{where}: onnx_down_smoothing={down!r} needs onnx_smoothing and onnx_calibration too: "
                             "the down projections are quantized only beside the other products, smoothed")
        return None
    if not alpha_setting(alpha) or not isinstance(calibration, str):
        raise ModelError(f"{where}: onnx_smoothing must be a number in (0, 1] and onnx_calibration the name of a "
                         f"texts file beside it, found onnx_smoothing={alpha!r}, onnx_calibration={calibration!r}")
    if down is not None and not alpha_setting(down):
        raise ModelError(f"{where}: onnx_down_smoothing must be a number in (0, 1] (the feed-forward down "
                         f"projections' alpha), found {down!r}; leave it out to keep them fp32")
    path = Path(folder) / calibration
    if not path.is_file():
        raise ModelError(f"{where}: onnx_calibration names {path}, which does not exist: the calibration texts "
                         "ship beside the manifest, one text a line")
    return onnx_int8.Smoothing(float(alpha), path, None if down is None else float(down))


def alpha_setting(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1


def quantization(found: onnx_int8.Smoothing | None) -> dict:
    """What the int8 form depends on besides the fp32 export: the recipe, and the smoothing (:func:`smoothing`'s
    answer) with its texts."""
    if found is None:
        return onnx_int8.RECIPE
    smoothed = {"alpha": found.alpha, "calibration_sha256": identity.file_sha256(found.calibration)}
    if found.down_alpha is None:
        return {**onnx_int8.RECIPE, "smoothing": smoothed}
    return {**onnx_int8.RECIPE, "fp32": "none", "smoothing": {**smoothed, "ffn_down_alpha": found.down_alpha}}


def calibration_feeds(path: Path, tokenizer_file: Path, text: dict) -> list[dict]:
    """The calibration texts as the scan batches them: tokenized as the entry does, sorted by length, padded per
    batch of ``hf.BATCH_SIZE``."""
    try:
        texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read the calibration texts {path}: {exc}") from exc
    if not texts:
        raise ModelError(f"the calibration texts {path} are empty: expected one text a line")
    ids = sorted(hf.encode_texts(RawTokenizer(tokenizer_file), texts, int(text["max_length"]), int(text["max_chars"])),
                 key=len)
    feeds = []
    for start in range(0, len(ids), hf.BATCH_SIZE):
        input_ids, mask = pad_arrays(ids[start:start + hf.BATCH_SIZE], int(text["pad_id"]))
        feeds.append({"input_ids": input_ids, "attention_mask": mask})
    return feeds


def versions() -> dict[str, str | None]:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def entry_record(model_id: str, precision: str, quantized: dict | None = None) -> dict:
    """Everything an entry's file depends on besides the model's content, which ``model_id`` stands for
    (``quantized``: :func:`quantization`, which int8 needs)."""
    record = {"model_id": model_id, "precision": precision, "scheme": EXPORT_SCHEME, "opset": OPSET,
              "versions": versions()}
    if precision == INT8:
        if quantized is None:
            raise ValueError("an int8 entry's record needs its quantization")
        record["quantization"] = quantized
    return record


def entry_dir(record: dict) -> Path:
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    return bases.cache_root() / "onnx" / f"{record['model_id']}-{record['precision']}-{key}"


def read_entry(folder: Path, record: dict) -> dict | None:
    """The entry in ``folder`` when it is complete and intact, else None (logged where it exists but is not)."""
    try:
        entry = json.loads((folder / ENTRY_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("the cached ONNX export in %s is unreadable (%s): building it again", folder, exc)
        return None
    model = folder / MODEL_FILE
    if (not isinstance(entry, dict) or entry.get("record") != record or not (folder / TOKENIZER_FILE).is_file()
            or not model.is_file() or model.stat().st_size != entry.get("size")
            or identity.file_sha256(model) != entry.get("sha256")):
        log.warning("the cached ONNX export in %s does not match its record: building it again", folder)
        return None
    return entry


def publish(tmp: Path, target: Path) -> None:
    """Move a finished entry into place; an entry another run published first wins, and a damaged one is moved
    aside and removed first."""
    if target.exists():
        aside = target.with_name(f".{target.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            target.rename(aside)
        except OSError:
            pass
        shutil.rmtree(aside, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:
        # Another run published the same entry meanwhile; its copy is as good as this one.
        shutil.rmtree(tmp, ignore_errors=True)


def build_entry(record: dict, target: Path, export) -> None:
    """Write an entry with ``export(tmp_folder) -> dict`` (the entry's text settings) and publish it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        fields = export(tmp)
        model = tmp / MODEL_FILE
        entry = {"record": record, **fields, "size": model.stat().st_size, "sha256": identity.file_sha256(model)}
        (tmp / ENTRY_FILE).write_text(json.dumps(entry, indent=2, sort_keys=True), encoding="utf-8")
        publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cached_entry(folder: Path, manifest: dict, model_id: str, precision: str) -> tuple[Path, dict]:
    """The cache entry of a model at a precision, built first where it is missing, stale or damaged."""
    found = smoothing(folder, manifest) if precision == INT8 else None
    record = entry_record(model_id, precision, quantization(found) if precision == INT8 else None)
    target = entry_dir(record)
    entry = read_entry(target, record)
    if entry is not None:
        return target, entry
    if precision == INT8:
        source, _ = cached_entry(folder, manifest, model_id, FP32)
        log.info("quantizing the ONNX export of %s to int8 once, into %s", folder, target)

        def export(tmp: Path) -> dict:
            shutil.copyfile(source / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
            fields = json.loads((source / ENTRY_FILE).read_text(encoding="utf-8"))
            if found is None:
                onnx_int8.quantize(source / MODEL_FILE, tmp / MODEL_FILE)
            else:
                onnx_int8.quantize(source / MODEL_FILE, tmp / MODEL_FILE, found,
                                   calibration_feeds(found.calibration, source / TOKENIZER_FILE, fields["text"]))
            return {key: fields[key] for key in ("text", "graph")}
    else:
        log.info("exporting %s to ONNX once, into %s", folder, target)

        def export(tmp: Path) -> dict:
            return export_fp32(folder, manifest, tmp)
    try:
        build_entry(record, target, export)
    except OSError as exc:
        raise ModelError(f"cannot write the ONNX export of {folder} into {target.parent}: {exc}. Set SCREENER_CACHE "
                         "to a writable folder, or use --backend torch") from exc
    entry = read_entry(target, record)
    if entry is None:
        raise ModelError(f"the ONNX export of {folder} in {target} could not be read back after writing it")
    return target, entry


def export_fp32(folder: Path, manifest: dict, tmp: Path) -> dict:
    """Export the merged fp32 model with its softmax (``onnx_graph``), fused and checked against torch, and the
    tokenizer, into ``tmp``; returns the entry's fields."""
    from screener.classifiers import onnx_graph

    clf = hf.load(folder, {**manifest, "cpu_bf16": False}, device="cpu")
    module, form = onnx_graph.graph_module(clf.model)
    try:
        fused = export_checked(module, clf, tmp / MODEL_FILE)
    except (GraphMismatch, ModelError) as exc:
        if form == onnx_graph.TRANSFORMERS:
            if isinstance(exc, ModelError):
                raise
            raise ModelError(f"the ONNX export of {folder} does not compute what torch computes ({exc}). Use "
                             "--backend torch") from exc
        log.warning("the %s graph of %s cannot be used (%s): exporting the model's own forward instead", form,
                    folder, exc)
        form = onnx_graph.TRANSFORMERS
        fused = export_checked(onnx_graph.probabilities_module(clf.model).eval(), clf, tmp / MODEL_FILE)
    clf.tokenizer.backend_tokenizer.save(str(tmp / TOKENIZER_FILE))
    return {"text": {"max_length": clf.max_length, "max_chars": clf.max_chars, "pad_id": clf.pad_id,
                     "labels": list(clf.labels)},
            "graph": {"form": form, "fused": fused}}


class GraphMismatch(Exception):
    """An exported graph whose probabilities differ from the torch model's by more than ``CHECK_TOLERANCE``."""


# A graph of the same function differs from torch by float rounding only (its additions run in another order); a
# graph of another function misses by far more.
CHECK_TOLERANCE = 1e-4


def export_checked(module, clf, path: Path) -> list[str]:
    """Export ``module`` to ``path``, fuse it and check it against the torch model; returns the fused operators."""
    import torch

    from screener.classifiers import onnx_graph

    example = torch.full(EXAMPLE_SHAPE, clf.pad_id, dtype=torch.long)
    mask = torch.ones(EXAMPLE_SHAPE, dtype=torch.long)
    rows = torch.export.Dim("rows")
    tokens = torch.export.Dim("tokens", max=clf.max_length)
    shapes = {"input_ids": {0: rows, 1: tokens}, "attention_mask": {0: rows, 1: tokens}}
    config = clf.model.config
    try:
        with warnings.catch_warnings(), hf.quiet_transformers():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (example, mask), input_names=list(INPUTS), output_names=[OUTPUT],
                                        dynamic_shapes=shapes, opset_version=OPSET, dynamo=True, verbose=False,
                                        external_data=False)
            program.save(str(path), external_data=False)
        fused = onnx_graph.optimize(path, config.num_attention_heads, config.hidden_size)
    except Exception as exc:  # the exporter and the optimizer raise many types of their own
        raise ModelError(f"cannot export {clf.name} to ONNX: {type(exc).__name__}: {exc}. Use --backend torch") from exc
    check_graph(path, clf)
    return fused


def probe_batch(clf, rows: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of a fixed random batch, right-padded: a full-length row, a one-token row and lengths between."""
    rng = np.random.default_rng(0)
    vocab = int(clf.model.config.vocab_size)
    lengths = sorted({clf.max_length, 1, 2, *rng.integers(3, clf.max_length + 1, rows - 3).tolist()}, reverse=True)
    return pad_arrays([rng.integers(0, vocab, n).tolist() for n in lengths], clf.pad_id)


def check_graph(path: Path, clf) -> None:
    """Raise GraphMismatch unless the graph at ``path`` gives the torch model's probabilities on ``probe_batch``."""
    import torch

    input_ids, mask = probe_batch(clf)
    with torch.inference_mode():
        logits = clf.model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(mask)).logits
        want = torch.softmax(logits.float(), dim=-1).numpy()
    got = session(path, 1).run([OUTPUT], {"input_ids": input_ids, "attention_mask": mask})[0]
    diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    if not diff <= CHECK_TOLERANCE:
        raise GraphMismatch(f"probabilities differ by {diff:.2g} on a probe batch, more than {CHECK_TOLERANCE:g}")


class RawTokenizer:
    """A ``tokenizers.Tokenizer`` called like a transformers fast tokenizer, for ``hf.encode_texts``."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()

    def __call__(self, texts: list[str], add_special_tokens: bool = True, **_) -> dict:
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
        return {"input_ids": [e.ids for e in encodings]}


class OnnxClassifier(ClassifierBase):
    """An ONNX Runtime session over a cached export. Class probabilities come out of the graph, in ``labels`` order.

    ``token_lengths`` keeps the token ids it computes for the window it was last called with (and the one before),
    so ``predict_proba`` over that window's batches tokenizes nothing again: a scan that computes a window's
    lengths on its reading thread has its tokenization overlapped with inference.

    It sorts and packs a call's texts itself (``screener.batching.token_budget_batches``, at most ``batch_size``
    texts and ``token_budget`` padded tokens a batch), so the scan hands it a whole window at once (after
    ``token_lengths`` on its reading thread). Each batch is cut into up to ``threads`` parts of consecutive texts
    (a part pads to its own longest text), and all the parts of a call run on a pool of ``threads`` threads
    against a session of one intra-op thread: no core waits for another inside an operator, as the threads of one
    multi-threaded session do at each of its operators, nor at the end of a batch, and a core that another
    process takes delays only the part it was running."""

    sizes_own_batches = True
    tokenizes_ahead = True
    min_window_rows = 0

    def __init__(self, session, tokenizer: RawTokenizer, *, name: str, model_id: str, precision: str,
                 max_length: int, max_chars: int, pad_id: int, labels: tuple[str, ...], threads: int,
                 batch_size: int = hf.BATCH_SIZE):
        self.session = session
        self.tokenizer = tokenizer
        self.name = name
        self.model_id = model_id
        self.precision = precision
        self.backend = f"onnx-{precision}"
        self.max_length = max_length
        self.max_chars = max_chars
        self.pad_id = pad_id
        self.labels = labels
        self.threads = threads
        self.batch_size = batch_size
        self.token_budget = batch_size * max_length
        self._lock = threading.Lock()
        self._encoded: list[dict[str, list[int]]] = []
        self._pool: ThreadPoolExecutor | None = None

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return hf.encode_texts(self.tokenizer, texts, self.max_length, self.max_chars)

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        ids = self.encode(texts)
        known = dict(zip(texts, ids))
        with self._lock:
            self._encoded = [*self._encoded[-1:], known]
        return [len(x) for x in ids]

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        with self._lock:
            windows = list(self._encoded)
        found: list[list[int] | None] = []
        for text in texts:
            hit = None
            for known in reversed(windows):
                hit = known.get(text) if isinstance(text, str) else None
                if hit is not None:
                    break
            found.append(hit)
        missing = [i for i, x in enumerate(found) if x is None]
        if missing:
            for i, ids in zip(missing, self.encode([texts[i] for i in missing])):
                found[i] = ids
        return found  # type: ignore[return-value]

    def _run(self, rows: list[list[int]]) -> np.ndarray:
        input_ids, mask = pad_arrays(rows, self.pad_id)
        return self.session.run([OUTPUT], {"input_ids": input_ids, "attention_mask": mask})[0]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        from screener.batching import token_budget_batches

        if self.session is None:
            raise ModelError(f"the classifier {self.name} was closed: load it again to score")
        encoded = self._ids(texts)
        out = np.empty((len(encoded), len(self.labels)), dtype=np.float32)
        lengths = [len(ids) for ids in encoded]
        parts = [part for idx in token_budget_batches(lengths, self.token_budget, self.batch_size)
                 for part in split_batch(idx, lengths, self.threads)]
        rows = [[encoded[i] for i in idx] for idx in parts]
        if self.threads > 1 and len(parts) > 1:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="onnx")
                pool = self._pool
            results = pool.map(self._run, rows)
        else:
            results = map(self._run, rows)
        for idx, proba in zip(parts, results):
            out[idx] = proba
        return out

    def close(self) -> None:
        """Stop the threads and let the sessions go: a scan aggregates after this, without the model's memory."""
        with self._lock:
            self._encoded = []
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self.session = None


def split_batch(idx: np.ndarray, lengths: Sequence[int], parts: int) -> list[np.ndarray]:
    """``idx`` (a batch, shortest text first) cut into at most ``parts`` runs of consecutive texts with about the
    same number of tokens each."""
    parts = max(1, min(parts, len(idx)))
    if parts == 1:
        return [idx]
    tokens = np.cumsum(np.maximum(np.asarray(lengths, dtype=np.int64)[idx], 1))
    cuts = {int(np.searchsorted(tokens, tokens[-1] * k / parts)) + 1 for k in range(1, parts)}
    return np.split(idx, sorted(c for c in cuts if 0 < c < len(idx)))


# ONNX Runtime's CPU kernels keep no state per input shape, so a batch pads to its longest text and no further.
PAD_MULTIPLE = 1


def pad_arrays(ids: Sequence[Sequence[int]], pad_id: int, multiple: int = PAD_MULTIPLE):
    """``hf.pad_batch`` as int64 numpy arrays, the inputs an ONNX Runtime session takes."""
    width = -(-max(len(x) for x in ids) // multiple) * multiple
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return input_ids, mask


def session(path: Path, threads: int = 1):
    """A CPU session of ``threads`` intra-op threads, which do not spin between operators (on a box shared with
    other work, or with this scan's reading and writing threads, a spinning thread takes a core from them)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidProtobuf types
        raise ModelError(f"cannot open the ONNX export {path}: {type(exc).__name__}: {exc}. Remove its folder to "
                         "build it again, or use --backend torch") from exc


def load(folder: Path, manifest: dict, device: str = "cpu", precision: str | None = None,
         threads: int = 0) -> OnnxClassifier:
    """The ONNX classifier of an ``hf-seqcls`` model folder at ``precision`` (default: the manifest's)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist")
    precision = precision or manifest_precision(manifest)
    if precision not in PRECISIONS:
        raise ModelError(f"ONNX precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if resolve_cpu_or_cuda(device) != "cpu":
        raise ModelError(f"the ONNX backend runs on the CPU, but device {device!r} was asked for")
    model_id = hf.manifest_model_id(folder, manifest)
    entry_folder, entry = cached_entry(folder, manifest, model_id, precision)
    threads = cpu_threads(threads)
    text = entry["text"]
    try:
        tokenizer = RawTokenizer(entry_folder / TOKENIZER_FILE)
    except Exception as exc:  # tokenizers raises a plain Exception for a damaged file
        raise ModelError(f"cannot read {entry_folder / TOKENIZER_FILE}: {exc}. Remove {entry_folder} to build it "
                         "again") from exc
    log.info("scoring with ONNX Runtime (%s, %d threads) from %s", precision, threads, entry_folder)
    return OnnxClassifier(session(entry_folder / MODEL_FILE), tokenizer,
                          name=str(manifest.get("name") or folder.name),
                          model_id=scored_model_id(model_id, precision, manifest, folder), precision=precision,
                          max_length=int(text["max_length"]), max_chars=int(text["max_chars"]),
                          pad_id=int(text["pad_id"]), labels=tuple(text["labels"]), threads=threads)
