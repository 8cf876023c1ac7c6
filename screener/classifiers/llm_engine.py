"""The fast GPU engine for ``llm-labeltoken`` models: the reference classifier's probabilities at the GPU's limit.

It computes exactly what ``screener.classifiers.llm`` computes (softmax over the two label-token logits at the last
position of the Alpaca prompt, never ``generate()``), but spends the GPU only on work that differs per message:

- The Alpaca prefix is the same for every message: its keys and values are computed once per engine, and every
  batch attends to them instead of recomputing about 40 tokens per message. A message whose first characters merge
  with the prefix's last token (a text starting with a newline, say) reuses the longest prefix its own tokenization
  shares with the cached one, so results never depend on where the tokenizer splits.
- Messages are sorted by token count and cut into batches under a token budget and a padding bound (10% by
  default), so padding costs a few percent. Right padding under a causal mask needs no per-row mask: no real
  token attends to the padding after it.
- q/k/v and gate/up are one matrix product each (the model's own projections become views into the fused weights,
  so no memory is added and the model still works), normalisation uses torch's fused RMSNorm, and grouped-query
  heads are folded into the query length so keys and values are never repeated.
- The last layer runs attention and MLP at each row's last position only, and the head multiplies by the two label
  rows only: the vocabulary projection is never computed.
- On CUDA a producer process tokenizes and packs the next batches while the GPU runs the current one, and a thread
  of the engine's process pins them. In a thread of the engine's own process, the tokenizer held the GIL that the
  thread launching kernels needs for up to 93 ms at a time; in a process of its own SmolLM2 went from 17.3k to
  28.6k msg/s on an H200 (benchmarks/results/engine_variants_smollm2_real_h200.json). Results stay on the GPU
  until the call ends, so the loop never waits for a device-to-host copy. Where the tokenizer allows (checked
  once), only the prompt's last line, the message and the suffix are tokenized per message, with ids identical to
  tokenizing whole prompts: a third of the tokenizer work.
- ``fp8=True`` runs the four projections of every layer in float8 (e4m3 weights scaled per row, activations per
  token, ``torch._scaled_mm``). It keeps SST-2 accuracy, but the unfused scaling of activations ate the faster
  products on Llama-8B shapes (1.02x), so it is off by default (README, "GPU scoring").
- Attention runs on torch's memory-efficient kernel on CUDA: cuDNN's, torch's first choice, plans every new batch
  shape, and a scan meets new shapes all the time (first pass 3.3x faster for SmolLM2, 1.9x for Llama-8B shapes).
- Several GPUs of one host: ``MultiGPUEngine`` runs one worker process per GPU and gives each a disjoint,
  token-balanced share of every call, so no message is scored twice.

The same code runs on CPU (torch's SDPA), which is how the tests check it against a plain padded forward.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import queue
import threading
from dataclasses import dataclass
from multiprocessing.util import Finalize
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from screener.errors import ModelError
from screener.prompt import INSTRUCTION, alpaca_prompt, cut_to_tokens, prompt_prefix_and_suffix

SUPPORTED_MODEL_TYPES = ("llama",)
DEFAULT_MAX_TEXT_TOKENS = 512


def shared_prefix_lengths(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                          prefix_ids: Sequence[int]) -> np.ndarray:
    """For each prompt (``flat[starts[i]:starts[i] + lengths[i]]``), how many leading tokens can reuse the cached
    prefix's keys and values: the tokens it shares with ``prefix_ids`` from the start.

    Causality makes the cached keys and values of positions ``< n`` valid for any prompt whose first ``n`` tokens
    equal the prefix's. At least one token is left to compute, because the last position's output is the result.
    """
    n = len(prefix_ids)
    if n == 0 or len(flat) == 0:
        return np.zeros(len(lengths), dtype=np.int64)
    cols = np.arange(n)
    tokens = flat[np.minimum(starts[:, None] + cols, len(flat) - 1)]
    equal = (cols < lengths[:, None]) & (tokens == np.asarray(prefix_ids, dtype=flat.dtype))
    matched = np.where(equal.all(axis=1), n, equal.argmin(axis=1))
    return np.maximum(np.minimum(matched, lengths - 1), 0).astype(np.int64)


# Texts that probe where a tokenizer could join a message to the prompt around it: leading and trailing
# whitespace, newlines, punctuation, digits, non-Latin letters and bytes that need several tokens.
_PROBES = ("", "x", " x", "  x", "\n", "\nx", "\n\nx", " \n x", "x\n", "x\n\n", "x ", ":", "###", "#x", "'s",
           "123", "é", "日本語", "😀", "\t", "\r\nx", "a" * 40, "Response:", "\n\n### Response:\n")


class PromptTokenizer:
    """Token ids of each text's Alpaca prompt, exactly as ``tokenizer(alpaca_prompt(text))`` gives them.

    Most of every prompt is the constant text before the message. When the tokenizer always splits before the
    prompt's last line ("### Input:\n", checked once on probe texts), only that line, the message and the suffix
    are tokenized per message, and ``head`` holds the constant ids before them: about a third of the tokenizer
    work. A tokenizer that does not split there (one that marks the start of a string, say) gets whole prompts,
    and ``head`` is empty.

    Texts longer than ``max_text_tokens`` are cut to their first ``max_text_tokens`` tokens (decoded and prompted
    again), the reference classifier's rule, so both give the same probability for every text.
    """

    def __init__(self, tokenizer, instruction: str = INSTRUCTION):
        self.tokenizer = tokenizer
        self.instruction = instruction
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        prefix, self._suffix = prompt_prefix_and_suffix(instruction)
        self.prefix_ids = list(tokenizer(prefix)["input_ids"])
        cut = prefix.rfind("\n\n") + 2
        self._anchor = prefix[cut:]
        # The head's ids are read off a whole prompt, not tokenized alone: alone, its trailing blank line can
        # tokenize differently (a lookahead sees the end of the string instead of the "###" that follows).
        wholes = self._whole(list(_PROBES))
        tails = self._tails(list(_PROBES))
        head = wholes[0][: len(wholes[0]) - len(tails[0])]
        self.anchored = (cut > 1 and self.prefix_ids[: len(head)] == head
                         and all(w == head + t for w, t in zip(wholes, tails)))
        self.head = head if self.anchored else []

    def _whole(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer([alpaca_prompt(t, self.instruction) for t in texts])["input_ids"]

    def _tails(self, texts: list[str]) -> list[list[int]]:
        strings = [self._anchor + t + self._suffix for t in texts]
        backend = self._backend
        # The backend tokenizer skips transformers' per-text dictionaries (a third of the CPU time here); it is
        # used only while no truncation or padding is set on it, when it returns what tokenizer(...) returns.
        if backend is not None and backend.truncation is None and backend.padding is None:
            return [e.ids for e in backend.encode_batch(strings, add_special_tokens=False)]
        return self.tokenizer(strings, add_special_tokens=False)["input_ids"]

    def split(self, texts: Sequence[str], max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS) -> list[list[int]]:
        """Each text's prompt ids after ``head`` (so that ``head + ids`` is the whole prompt's)."""
        texts = list(texts)
        if not texts:
            return []
        part = self._tails if self.anchored else self._whole
        out = part(texts)
        limit = max_text_tokens - len(self.head)
        for i, text in enumerate(texts):
            if len(out[i]) <= limit:
                continue
            cut = cut_to_tokens(self.tokenizer, text, max_text_tokens)
            if cut is not None:
                out[i] = part([cut])[0]
        return out

    def encode(self, texts: Sequence[str], max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS) -> list[list[int]]:
        return [self.head + ids for ids in self.split(texts, max_text_tokens)]


def plan_batches(lengths: np.ndarray, shared: np.ndarray, token_budget: int, max_batch: int,
                 max_padding: float = 0.1) -> list[np.ndarray]:
    """Indices of each batch: rows sorted by (shared prefix, length) and cut so that rows x longest stays within
    the token budget and within ``1 + max_padding`` times the batch's real tokens.

    A batch never mixes shared-prefix lengths (they need different cached keys); a row longer than the budget gets
    a batch of its own.
    """
    order = np.lexsort((lengths, shared))
    batches = []
    start, n = 0, len(order)
    while start < n:
        end, real = start + 1, int(lengths[order[start]])
        while end < n and end - start < max_batch and shared[order[end]] == shared[order[start]]:
            padded = (end - start + 1) * int(lengths[order[end]])
            if padded > token_budget or padded > (1 + max_padding) * (real + lengths[order[end]]):
                break
            real += int(lengths[order[end]])
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def pack_chunk(prompts: PromptTokenizer, prefix_ids: Sequence[int], texts: Sequence[str], *, max_text_tokens: int,
               token_budget: int, max_batch: int, max_padding: float) -> list[tuple[np.ndarray, np.ndarray,
                                                                                   np.ndarray, int]]:
    """The batches for ``texts`` as numpy arrays: (right-padded ids [rows, width], index of each row's last real
    token, position of each row in ``texts``, cached prefix tokens the rows reuse).

    Pure CPU work with no engine state, so that it can run in the producer thread or in a producer process.
    Prompts come as head + part, the head's ids shared by all; only the parts are per message. The parts are laid
    end to end in one array and every batch is gathered from it by numpy: per-row Python here would hold the GIL
    that the thread launching GPU work needs.
    """
    head = len(prompts.head)
    parts = prompts.split(texts, max_text_tokens)
    total = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    flat = np.fromiter(itertools.chain.from_iterable(parts), dtype=np.int64, count=int(total.sum()))
    starts = np.zeros(len(parts), dtype=np.int64)
    np.cumsum(total[:-1], out=starts[1:])
    skips = shared_prefix_lengths(flat, starts, total, prefix_ids[head:])
    lengths = total - skips
    out = []
    for idx in plan_batches(lengths, skips + head, token_budget, max_batch, max_padding):
        skip = int(skips[idx[0]])
        cols = np.arange(int(lengths[idx].max()))
        source = np.minimum(starts[idx, None] + skip + cols, len(flat) - 1)
        ids = np.where(cols < lengths[idx, None], flat[source], 0)
        out.append((ids, lengths[idx] - 1, idx, skip + head))
    return out


def _packer_main(prompts: PromptTokenizer, prefix_ids: list[int], conn) -> None:
    """The producer process: answers (tag, texts, options) requests with (tag, batches) or (tag, error text).

    A thread reads requests as they come: the engine sends the next request while this process sends a reply,
    and with both blocked on a full pipe neither would ever read.
    """
    requests: queue.Queue = queue.Queue()

    def read() -> None:
        while True:
            try:
                request = conn.recv()
            except EOFError:  # the engine's process is gone
                request = None
            requests.put(request)
            if request is None:
                return

    threading.Thread(target=read, daemon=True).start()
    while (request := requests.get()) is not None:
        tag, texts, options = request
        try:
            conn.send((tag, pack_chunk(prompts, prefix_ids, texts, **options), None))
        except BaseException as exc:  # reported to the engine, which raises it in the caller's thread
            conn.send((tag, None, f"{type(exc).__name__}: {exc}"))


class _PackerProcess:
    """``pack_chunk`` in a process of its own, so that tokenizing never holds the GIL of the process launching
    GPU work (the tokenizer's batch call held it for 58 to 93 ms at a time: benchmarks/results/gil_pauses.json).

    Requests are tagged: replies to a call that was abandoned part way (an exception in the consumer) are
    recognised by their old tag and dropped by the next call.
    """

    def __init__(self, prompts: PromptTokenizer, prefix_ids: Sequence[int]):
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # fork would copy CUDA state and the tokenizer's threads
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_packer_main, args=(prompts, list(prefix_ids), child), daemon=True,
                                        name="screener-packer")
        self._process.start()
        child.close()
        self._calls = itertools.count()

    def map(self, chunks, options: dict):
        """``pack_chunk`` of each chunk in order, the next chunk's request sent before this one's reply is read."""
        tag = next(self._calls)
        in_flight: collections.deque = collections.deque()
        for i, chunk in enumerate(chunks):
            self._conn.send(((tag, i), chunk, options))
            in_flight.append((tag, i))
            if len(in_flight) == 2:
                yield self._receive(in_flight.popleft())
        while in_flight:
            yield self._receive(in_flight.popleft())

    def _receive(self, want):
        while True:
            try:
                got, batches, error = self._conn.recv()
            except EOFError:
                raise ModelError("the engine's tokenizer process exited unexpectedly") from None
            if got == want:
                if error is not None:
                    raise ModelError(f"tokenizing a batch failed: {error}")
                return batches

    def close(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(None)
            self._process.join(timeout=10)
        self._conn.close()


@dataclass
class _Batch:
    ids: object  # LongTensor [rows, width], right padded, pinned when the engine is on CUDA
    last: object  # LongTensor [rows]: index of each row's last real token
    rows: object  # LongTensor [rows]: position of each row in the caller's texts
    shared: int  # cached prefix tokens every row reuses


_FP8_MAX = 448.0  # the largest float8 e4m3 value


@dataclass
class _FP8Weight:
    """A projection's weight in float8 (e4m3) with one scale per output row, laid out as torch._scaled_mm wants
    its second operand: [in, out], column-major."""
    qt: object
    scale: object  # float32 [1, out]


def _to_fp8(weight) -> _FP8Weight:
    import torch

    w = weight.float()
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / _FP8_MAX
    return _FP8Weight(qt=(w / scale).to(torch.float8_e4m3fn).t(), scale=scale.t().contiguous())


@dataclass
class _Layer:
    wqkv: object
    bqkv: object
    wo: object
    bo: object
    ln1: object
    eps1: float
    ln2: object
    eps2: float
    wgu: object
    bgu: object
    wdown: object
    bdown: object
    act: Callable


def _fuse(linears):
    """One weight (and bias) for several projections of the same input; the modules keep views into it."""
    import torch
    from torch import nn

    for m in linears:
        if type(m) is not nn.Linear:
            raise ModelError(
                f"the GPU engine needs plain nn.Linear projections, found {type(m).__name__}: merge LoRA adapters "
                "into the base (PeftModel.merge_and_unload()) before building the engine")
    weight = torch.cat([m.weight.detach() for m in linears], 0)
    bias = None
    if any(m.bias is not None for m in linears):
        bias = torch.cat([m.bias.detach() if m.bias is not None
                          else weight.new_zeros(m.weight.shape[0]) for m in linears])
    start = 0
    for m in linears:
        rows = m.weight.shape[0]
        m.weight = nn.Parameter(weight[start:start + rows], requires_grad=False)
        if m.bias is not None:
            m.bias = nn.Parameter(bias[start:start + rows], requires_grad=False)
        start += rows
    return weight, bias


def _norm_weight(norm) -> tuple[object, float]:
    eps = getattr(norm, "variance_epsilon", None)
    if eps is None or not type(norm).__name__.endswith("RMSNorm"):
        raise ModelError(f"the GPU engine supports RMSNorm layers with weight * x / rms(x), found {type(norm).__name__}")
    return norm.weight.detach(), float(eps)


def _weight_fingerprint(model) -> str:
    """A cheap content hash of the weights: a strided sample of every tensor, rounded to bf16 so that the same
    weights loaded in fp32 or bf16 give the same id."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)][:64].to(torch.bfloat16).float().cpu().numpy()
        digest.update(name.encode() + str(tuple(tensor.shape)).encode() + sample.tobytes())
    return digest.hexdigest()


class LabelTokenEngine:
    """``Classifier`` for a causal LM with the label-token head; see the module docstring for how it is fast."""

    sizes_own_batches = True

    def __init__(self, model, tokenizer, label_ids: tuple[int, int], instruction: str = INSTRUCTION, *,
                 name: str = "llm-engine", model_id: str | None = None,
                 max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS, token_budget: int | None = None,
                 max_batch: int = 4096, max_padding: float = 0.1, chunk_size: int = 65536, prefetch: int = 4,
                 attention: Sequence[str] | str | None = None, producer: str | None = None, fp8: bool = False):
        import torch

        config = model.config
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelError(f"the GPU engine supports model types {SUPPORTED_MODEL_TYPES}, found "
                             f"{config.model_type!r}: use the reference classifier (screener.classifiers.llm)")
        self.name = name
        self.tokenizer = tokenizer
        self.instruction = instruction
        self.label_ids = tuple(int(i) for i in label_ids)
        self.max_text_tokens = max_text_tokens
        self.max_batch = max_batch
        self.max_padding = max_padding
        self.chunk_size = chunk_size
        self.prefetch = prefetch
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.on_cuda = self.device.type == "cuda"
        # The scan hands this engine windows of at least this many messages (see screener.scan._score_pending).
        self.min_window_rows = chunk_size if self.on_cuda else 0
        if isinstance(attention, str):
            attention = attention.split("+")
        # cuDNN's attention (torch's first choice on an H200) builds a plan for every new batch shape: SmolLM2's
        # first pass over 50k messages ran at 4.9k msg/s with it and 16.2k with the memory-efficient kernel, warm
        # passes 21.2k and 21.5k (benchmarks/results/engine_variants_smollm2_h200.json). Math is the fallback.
        if attention is None and self.on_cuda:
            attention = ("efficient_attention", "math")
        self.attention = tuple(attention or ())
        self._attention_backends()  # an unknown kernel name fails here, not at the first batch
        # About 32k tokens per batch keep an 8B model's matrix products at full speed with a few GB of activations.
        # Smaller models want more rows per batch; past 64k tokens SmolLM2 gained nothing once warm (18.9k msg/s at
        # 64k, 18.2k at 128k; benchmarks/results/gpu_scan*.json) and only held more memory.
        budget = max(32768, min(65536, 2**27 // config.hidden_size)) if self.on_cuda else 2048
        self.token_budget = token_budget or budget
        prefix, suffix = prompt_prefix_and_suffix(instruction)
        if model_id is None:
            digest = hashlib.sha256(b"llm-labeltoken-engine\x00" + _weight_fingerprint(model).encode())
            digest.update(json.dumps([prefix, suffix, list(self.label_ids)]).encode())
            model_id = digest.hexdigest()[:16]
        self.model_id = model_id

        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.hidden = config.hidden_size
        decoder = model.get_decoder()
        self._embed = model.get_input_embeddings()
        self._rotary = decoder.rotary_emb
        self._scaling = decoder.layers[0].self_attn.scaling
        with torch.no_grad():
            self._layers = [self._take_layer(layer) for layer in decoder.layers]
            self._final_norm = _norm_weight(decoder.norm)
            head = model.get_output_embeddings()
            ids = torch.as_tensor(self.label_ids, device=self.device)
            self._head = head.weight.detach()[ids].clone()
            self._head_bias = head.bias.detach()[ids].clone() if getattr(head, "bias", None) is not None else None
        self.fp8 = bool(fp8)
        if self.fp8:
            self._layers = [self._fp8_layer(layer) for layer in self._layers]
        self._cos = self._sin = None
        self._masks: dict[tuple[int, int], object] = {}
        self.prompts = PromptTokenizer(tokenizer, instruction)
        self.prefix_ids = self.prompts.prefix_ids
        self._prefix_kv = self._compute_prefix_kv()
        # On CPU the forward is far slower than tokenizing, so a process would only add its start-up.
        self.producer = producer or ("process" if self.on_cuda else "thread")
        if self.producer not in ("thread", "process"):
            raise ModelError(f"producer must be 'thread' or 'process', got {self.producer!r}")
        self._packer = _PackerProcess(self.prompts, self.prefix_ids) if self.producer == "process" else None

    def _take_layer(self, layer) -> _Layer:
        attn, mlp = layer.self_attn, layer.mlp
        wqkv, bqkv = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
        wgu, bgu = _fuse([mlp.gate_proj, mlp.up_proj])
        ln1, eps1 = _norm_weight(layer.input_layernorm)
        ln2, eps2 = _norm_weight(layer.post_attention_layernorm)
        return _Layer(wqkv=wqkv, bqkv=bqkv, wo=attn.o_proj.weight.detach(),
                      bo=None if attn.o_proj.bias is None else attn.o_proj.bias.detach(),
                      ln1=ln1, eps1=eps1, ln2=ln2, eps2=eps2, wgu=wgu, bgu=bgu,
                      wdown=mlp.down_proj.weight.detach(),
                      bdown=None if mlp.down_proj.bias is None else mlp.down_proj.bias.detach(),
                      act=mlp.act_fn)

    def _fp8_layer(self, layer: _Layer) -> _Layer:
        """The layer with its four projections in float8: activations are scaled per token at each product."""
        import torch

        if self.on_cuda and torch.cuda.get_device_capability(self.device) < (8, 9):
            raise ModelError(f"fp8 needs a GPU of compute capability 8.9 or later (Ada, Hopper), found "
                             f"{torch.cuda.get_device_name(self.device)}: leave fp8 off")
        weights = (layer.wqkv, layer.wo, layer.wgu, layer.wdown)
        if any(d % 16 for w in weights for d in w.shape):
            raise ModelError(f"fp8 needs projection sizes that are multiples of 16, found "
                             f"{[tuple(w.shape) for w in weights]}: leave fp8 off")
        return dataclasses.replace(layer, wqkv=_to_fp8(layer.wqkv), wo=_to_fp8(layer.wo), wgu=_to_fp8(layer.wgu),
                                   wdown=_to_fp8(layer.wdown))

    @staticmethod
    def _linear(x, weight, bias, part: slice | None = None):
        """x @ weight[part].T + bias[part], in float8 when the weight is (x scaled per row, the product in float32,
        the result in x's dtype)."""
        import torch
        import torch.nn.functional as F

        if part is not None and bias is not None:
            bias = bias[part]
        if not isinstance(weight, _FP8Weight):
            return F.linear(x, weight if part is None else weight[part], bias)
        qt, scale = (weight.qt, weight.scale) if part is None else (weight.qt[:, part], weight.scale[:, part])
        rows = x.reshape(-1, x.shape[-1])
        x_scale = rows.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / _FP8_MAX
        out = torch._scaled_mm((rows / x_scale).to(torch.float8_e4m3fn), qt, scale_a=x_scale, scale_b=scale,
                               out_dtype=x.dtype)
        if bias is not None:
            out = out + bias
        return out.view(*x.shape[:-1], out.shape[-1])

    # ---- Classifier protocol -------------------------------------------------------------------------------

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def predict_negative(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        texts = list(texts)
        if not texts:
            return np.empty(0, dtype=np.float32)
        out = torch.empty(len(texts), dtype=torch.float32, device=self.device)
        batches: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        producer = threading.Thread(target=self._produce, args=(texts, batches, stop), daemon=True)
        producer.start()
        try:
            with torch.inference_mode(), self._attention_backends():
                while (item := batches.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    ids = item.ids.to(self.device, non_blocking=True)
                    last = item.last.to(self.device, non_blocking=True)
                    rows = item.rows.to(self.device, non_blocking=True)
                    out.index_copy_(0, rows, self._probabilities(ids, last, item.shared))
        finally:
            stop.set()
            producer.join()
        return out.cpu().numpy()

    def _attention_backends(self):
        """The scaled-dot-product-attention kernels the forward may use (``attention``), or torch's choice."""
        if not self.attention:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([getattr(SDPBackend, name.upper()) for name in self.attention])

    # ---- producer (a thread, fed by the producer process where there is one) ----------------------------------

    def _produce(self, texts: list[str], batches: queue.Queue, stop: threading.Event) -> None:
        def put(item) -> bool:
            while not stop.is_set():
                try:
                    batches.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for batch in self.batches(texts):
                if not put(batch):
                    return
            put(None)
        except BaseException as exc:  # handed to the consumer, which re-raises it in the caller's thread
            put(exc)

    def batches(self, texts: Sequence[str]):
        """The batches ``predict_negative`` runs, in order: what the producer does, without the GPU."""
        import torch

        texts = list(texts)
        # A small first chunk gets the GPU going sooner; later ones are large, so that sorting leaves little
        # padding.
        offsets, start, size = [], 0, min(1024, self.chunk_size)
        while start < len(texts):
            offsets.append((start, size))
            start, size = start + size, min(4 * size, self.chunk_size)
        chunks = (texts[start:start + size] for start, size in offsets)
        options = {"max_text_tokens": self.max_text_tokens, "token_budget": self.token_budget,
                   "max_batch": self.max_batch, "max_padding": self.max_padding}
        if self._packer is not None:
            packed = self._packer.map(chunks, options)
        else:
            packed = (pack_chunk(self.prompts, self.prefix_ids, chunk, **options) for chunk in chunks)
        for (start, _), arrays in zip(offsets, packed):
            for ids, last, idx, shared in arrays:
                tensors = [torch.from_numpy(a) for a in (ids, last, idx + start)]
                if self.on_cuda:
                    tensors = [t.pin_memory() for t in tensors]
                yield _Batch(*tensors, shared=shared)

    def close(self) -> None:
        """Stops the producer process, if any (it also stops with this process)."""
        if self._packer is not None:
            self._packer.close()
            self._packer = None

    # ---- the forward ----------------------------------------------------------------------------------------

    def _rope_tables(self, positions: int):
        """cos and signed sin for positions [0, positions), from the model's own rotary module (the values its
        forward uses)."""
        import torch

        if self._cos is None or self._cos.shape[0] < positions:
            size = max(positions, 2 * (0 if self._cos is None else self._cos.shape[0]), 1024)
            pos = torch.arange(size, device=self.device)[None]
            probe = torch.empty(0, dtype=self.dtype, device=self.device)
            cos, sin = self._rotary(probe, pos)
            half = sin.shape[-1] // 2
            # sin with its first half negated: rotate_half(x) * sin == swap_halves(x) * signed_sin, exactly
            # (negation is exact), one kernel fewer per rotation.
            self._cos, self._sin = cos[0], torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1)
        return self._cos, self._sin

    def _mask(self, shared: int, width: int):
        """Additive mask [groups * width, shared + width]: all of the prefix, causal over the row's own tokens.

        Query row r is position r % width (the grouped heads are folded into the query length)."""
        import torch

        key = (shared, width)
        if key not in self._masks:
            groups = self.n_heads // self.n_kv
            q_pos = torch.arange(width, device=self.device).repeat(groups)
            k_pos = torch.arange(shared + width, device=self.device) - shared
            blocked = k_pos[None, :] > q_pos[:, None]
            mask = torch.zeros(blocked.shape, dtype=self.dtype, device=self.device)
            self._masks[key] = mask.masked_fill_(blocked, float("-inf"))
        return self._masks[key]

    @staticmethod
    def _rotate(x, cos, signed_sin):
        """Rotary embedding, bit for bit transformers' apply_rotary_pos_emb in the same dtype."""
        import torch

        half = x.shape[-1] // 2
        return x * cos + torch.cat((x[..., half:], x[..., :half]), dim=-1) * signed_sin

    def _keys_values(self, h, layer: _Layer, cos, sin):
        """Rotated keys and values [rows, kv_heads, width, head_dim] of normalised hidden states h."""

        rows, width, _ = h.shape
        q_size = self.n_heads * self.head_dim
        kv = self._linear(h, layer.wqkv, layer.bqkv, slice(q_size, None))
        k, v = kv.view(rows, width, 2, self.n_kv, self.head_dim).unbind(2)
        k = self._rotate(k, cos[:, None, :], sin[:, None, :])
        return k.transpose(1, 2), v.transpose(1, 2)

    def _block(self, x, layer: _Layer, cos, sin, prefix_kv, mask):
        """One decoder layer over every position of x [rows, width, hidden]."""
        import torch
        import torch.nn.functional as F

        rows, width, _ = x.shape
        groups = self.n_heads // self.n_kv
        q_size, kv_size = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        h = F.rms_norm(x, (self.hidden,), layer.ln1, layer.eps1)
        qkv = self._linear(h, layer.wqkv, layer.bqkv)
        # q and k are adjacent in the fused output: one rotation covers both heads' kinds.
        qk = qkv[..., : q_size + kv_size].view(rows, width, self.n_heads + self.n_kv, self.head_dim)
        qk = self._rotate(qk, cos[:, None, :], sin[:, None, :])
        q = qk[:, :, : self.n_heads].view(rows, width, self.n_kv, groups, self.head_dim)
        q = q.permute(0, 2, 3, 1, 4).reshape(rows, self.n_kv, groups * width, self.head_dim)
        k = qk[:, :, self.n_heads:].transpose(1, 2)
        v = qkv[..., q_size + kv_size:].view(rows, width, self.n_kv, self.head_dim).transpose(1, 2)
        if prefix_kv is not None:
            pk, pv = prefix_kv
            k = torch.cat((pk.expand(rows, -1, -1, -1), k), 2)
            v = torch.cat((pv.expand(rows, -1, -1, -1), v), 2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self._scaling)
        o = o.view(rows, self.n_kv, groups, width, self.head_dim).permute(0, 3, 1, 2, 4).reshape(rows, width, -1)
        x = x + self._linear(o, layer.wo, layer.bo)
        return x + self._mlp(F.rms_norm(x, (self.hidden,), layer.ln2, layer.eps2), layer)

    def _mlp(self, h, layer: _Layer):

        gate, up = self._linear(h, layer.wgu, layer.bgu).chunk(2, dim=-1)
        return self._linear(layer.act(gate) * up, layer.wdown, layer.bdown)

    def _last_block(self, x, layer: _Layer, cos, sin, prefix_kv, last, shared: int):
        """The last decoder layer, evaluated at each row's last real position only: [rows, hidden]."""
        import torch
        import torch.nn.functional as F

        rows, width, _ = x.shape
        groups = self.n_heads // self.n_kv
        q_size = self.n_heads * self.head_dim
        h = F.rms_norm(x, (self.hidden,), layer.ln1, layer.eps1)
        k, v = self._keys_values(h, layer, cos, sin)
        if prefix_kv is not None:
            k = torch.cat((prefix_kv[0].expand(rows, -1, -1, -1), k), 2)
            v = torch.cat((prefix_kv[1].expand(rows, -1, -1, -1), v), 2)
        index = torch.arange(rows, device=x.device)
        x_last = x[index, last]
        q = self._linear(h[index, last], layer.wqkv, layer.bqkv, slice(None, q_size))
        q = q.view(rows, self.n_kv, groups, self.head_dim)
        full_cos, full_sin = self._rope_tables(shared + width)
        q = self._rotate(q, full_cos[shared + last][:, None, None, :], full_sin[shared + last][:, None, None, :])
        blocked = torch.arange(shared + width, device=x.device)[None, :] > (shared + last)[:, None]
        mask = torch.zeros(blocked.shape, dtype=x.dtype, device=x.device).masked_fill_(blocked, float("-inf"))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], scale=self._scaling)
        x_last = x_last + self._linear(o.reshape(rows, -1), layer.wo, layer.bo)
        return x_last + self._mlp(F.rms_norm(x_last, (self.hidden,), layer.ln2, layer.eps2), layer)

    def _probabilities(self, ids, last, shared: int):
        """P(negative) [rows] float32 for right-padded ids whose prompts start with ``shared`` cached tokens."""
        import torch
        import torch.nn.functional as F

        width = ids.shape[1]
        cos, sin = self._rope_tables(shared + width)
        cos, sin = cos[shared:shared + width], sin[shared:shared + width]
        mask = self._mask(shared, width)
        x = self._embed(ids)
        prefix = [(k[:, :, :shared], v[:, :, :shared]) if shared else None for k, v in self._prefix_kv]
        for layer, kv in zip(self._layers[:-1], prefix[:-1]):
            x = self._block(x, layer, cos, sin, kv, mask)
        x = self._last_block(x, self._layers[-1], cos, sin, prefix[-1], last, shared)
        x = F.rms_norm(x, (self.hidden,), self._final_norm[0], self._final_norm[1])
        logits = F.linear(x, self._head, self._head_bias).float()
        return torch.softmax(logits, dim=-1)[:, 0]

    def _compute_prefix_kv(self):
        """Keys and values [1, kv_heads, prefix, head_dim] of every layer for the cached prompt prefix."""
        import torch
        import torch.nn.functional as F

        if not self.prefix_ids:
            return [(None, None)] * len(self._layers)
        with torch.inference_mode():
            ids = torch.as_tensor([self.prefix_ids], device=self.device)
            width = ids.shape[1]
            cos, sin = self._rope_tables(width)
            cos, sin = cos[:width], sin[:width]
            mask = self._mask(0, width)
            x = self._embed(ids)
            cache = []
            for i, layer in enumerate(self._layers):
                h = F.rms_norm(x, (self.hidden,), layer.ln1, layer.eps1)
                cache.append(self._keys_values(h, layer, cos, sin))
                if i + 1 < len(self._layers):
                    x = self._block(x, layer, cos, sin, None, mask)
        return cache


# ---- several GPUs ---------------------------------------------------------------------------------------------


def _worker(build: Callable[[str], object], device: str, conn) -> None:
    try:
        if device.startswith("cuda"):
            import torch

            # Otherwise every worker also opens a context (and its memory) on GPU 0.
            torch.cuda.set_device(device)
        engine = build(device)
        conn.send(("ready", engine.model_id, engine.name, int(getattr(engine, "min_window_rows", 0))))
    except BaseException as exc:  # reported to the parent, which raises a ModelError
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        try:
            command, payload = conn.recv()
        except EOFError:  # the parent is gone
            command = "stop"
        if command == "stop":
            if hasattr(engine, "close"):
                engine.close()
            return
        try:
            result = engine.predict_negative(payload) if command == "score" else engine.token_lengths(payload)
            conn.send(("ok", result))
        except BaseException as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _stop_workers(workers) -> None:
    for process, conn in workers:
        if process.is_alive():
            with contextlib.suppress(OSError):
                conn.send(("stop", None))
    for process, _ in workers:
        process.join(timeout=30)
        if process.is_alive():
            process.terminate()


class MultiGPUEngine:
    """One worker process per GPU of this host, each with its own engine, sharing every call without overlap.

    Each ``predict_negative`` call is split into disjoint slices, one per worker: texts sorted by length and dealt
    round-robin, so every GPU gets about the same number of tokens. ``build(device)`` must be picklable (a
    module-level function or a functools.partial of one) and return a classifier on that device. Workers start
    with ``spawn`` because CUDA cannot be used in a forked child.
    """

    sizes_own_batches = True

    def __init__(self, build: Callable[[str], object], devices: Sequence[str], start_method: str = "spawn"):
        import multiprocessing

        if not devices:
            raise ModelError("MultiGPUEngine needs at least one device")
        context = multiprocessing.get_context(start_method)
        self._workers = []
        for device in devices:
            parent, child = context.Pipe()
            # Not daemonic: a worker's engine starts a producer process of its own, which daemonic processes may
            # not. The finaliser below stops the workers when this process exits without close().
            process = context.Process(target=_worker, args=(build, device, child), daemon=False)
            process.start()
            child.close()
            self._workers.append((process, parent))
        self._finalizer = Finalize(self, _stop_workers, args=(self._workers,), exitpriority=10)
        replies = [conn.recv() for _, conn in self._workers]
        errors = [f"{d}: {r[1]}" for d, r in zip(devices, replies) if r[0] == "error"]
        if errors:
            self.close()
            raise ModelError("a GPU worker could not load the model: " + "; ".join(errors))
        ids = {r[1] for r in replies}
        if len(ids) != 1:
            self.close()
            raise ModelError(f"GPU workers loaded different weights (model ids {sorted(ids)}): expected one model")
        self.model_id, self.name, window = replies[0][1], replies[0][2], replies[0][3]
        self.devices = list(devices)
        self.min_window_rows = window * len(self._workers)

    def _ask(self, command: str, parts: list[list[str]]) -> list:
        """Send part i to worker i (as many workers as parts) and collect their results in the same order."""
        workers = self._workers[: len(parts)]
        for (_, conn), part in zip(workers, parts):
            conn.send((command, part))
        replies = [conn.recv() for _, conn in workers]
        errors = [r[1] for r in replies if r[0] == "error"]
        if errors:
            raise ModelError("a GPU worker failed: " + "; ".join(errors))
        return [r[1] for r in replies]

    def predict_negative(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        out = np.empty(len(texts), dtype=np.float32)
        if not texts:
            return out
        order = np.argsort(np.array([len(t) for t in texts]), kind="stable")
        slices = [order[i::len(self._workers)] for i in range(len(self._workers))]
        results = self._ask("score", [[texts[i] for i in s] for s in slices])
        for s, probs in zip(slices, results):
            out[s] = probs
        return out

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        return self._ask("lengths", [list(texts)])[0]

    def close(self) -> None:
        self._finalizer()
        self._workers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- loading from a model folder -------------------------------------------------------------------------------


def build_engine(folder: Path, manifest: dict, device: str, *, name: str, model_id: str):
    """A classifier on one device for a model folder, loaded by the reference classifier's loader: the engine, or
    the reference classifier for model types the engine does not support."""
    import torch

    from screener.classifiers.llm import LabelTokenClassifier, load_model_and_tokenizer

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model, tokenizer, label_ids = load_model_and_tokenizer(folder, manifest, device, dtype)
    instruction = manifest.get("instruction", INSTRUCTION)
    max_text_tokens = int(manifest.get("max_text_tokens", DEFAULT_MAX_TEXT_TOKENS))
    if model.config.model_type not in SUPPORTED_MODEL_TYPES:
        return LabelTokenClassifier(model, tokenizer, label_ids, name=name, model_id=model_id, device=device,
                                    instruction=instruction, max_text_tokens=max_text_tokens)
    return LabelTokenEngine(model, tokenizer, label_ids, instruction, name=name, model_id=model_id,
                            max_text_tokens=max_text_tokens)


def load_engine(folder: Path, manifest: dict, device: str = "cuda", *, name: str, model_id: str):
    """What ``llm.load`` returns on CUDA: one engine on the named device, or, for ``cuda``, one worker process per
    visible GPU when there are several."""
    import torch

    if device == "cuda" and torch.cuda.device_count() > 1:
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return MultiGPUEngine(functools.partial(build_engine, Path(folder), manifest, name=name, model_id=model_id),
                              devices)
    return build_engine(Path(folder), manifest, device, name=name, model_id=model_id)
