"""The engine itself: ``LabelTokenEngine`` scores texts with a causal LM's label tokens on one device.

See the package docstring for what makes it fast; the forward below is checked against a plain padded
transformers forward on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from screener.classifiers import identity
from screener.classifiers.base import ClassifierBase
from screener.classifiers.gpu import fp8, fused
from screener.classifiers.gpu.buckets import Buckets, width_ladder
from screener.classifiers.gpu.fast_paths import FastPaths
from screener.classifiers.gpu.fp8 import scored_model_id as fp8_model_id
from screener.classifiers.gpu.packing import pack_chunk, regroup
from screener.classifiers.gpu.producer import ProducerProcess
from screener.classifiers.gpu.prompt_tokens import PromptTokenizer
from screener.errors import ModelError
from screener.prompt import (DEFAULT_MAX_TEXT_TOKENS, INSTRUCTION, LABEL_WORDS, label_classes,
                             prompt_prefix_and_suffix)

# Decoders of the Llama layout: RMSNorm, rotary q/k, grouped-query attention, gated MLP; biases (Qwen2's on
# q/k/v) are fused with their weights, and the rotary tables come from the model's own rotary module.
SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
# Bucket widths reach this far past max_text_tokens (the prompt's last line and suffix); wider batches run eagerly.
GRAPH_WIDTH_MARGIN = 64


@dataclass
class Batch:
    """One batch as the producer hands it to the forward: padded, or ragged (``starts`` set)."""

    ids: object  # LongTensor [rows, width] right padded, or [tokens] ragged; pinned when the engine is on CUDA
    last: object  # LongTensor [rows]: index of each row's last real token within its row
    rows: object  # LongTensor [rows]: position of each row in the caller's texts
    shared: int  # cached prefix tokens every row reuses
    starts: object = None  # ragged: IntTensor [rows + 1], row i is ids[starts[i]:starts[i + 1]]
    positions: object = None  # ragged: LongTensor [tokens], each token's position within its row
    longest: int = 0  # ragged: the longest row's tokens


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
    silu: bool  # act is SiLU, which float8 fuses with the product by up and the quantization


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
        raise ModelError("the GPU engine supports RMSNorm layers with weight * x / rms(x), found "
                         f"{type(norm).__name__}")
    return norm.weight.detach(), float(eps)


def default_max_padding(hidden_size: int) -> float:
    """The share of padding a batch may have, by the model's width. A model as wide as Llama-3.1-8B is bound by its
    matrix products, so padding costs it as much as real tokens: batches of at most 3% padding (more of them) are
    2.4% faster there. Narrower models are bound by launches and want fewer, fuller batches: 10% padding is 10%
    faster for Qwen2.5-1.5B and 43% for SmolLM2 (benchmarks/results/gpu_scan_padding_h200.json)."""
    return 0.03 if hidden_size >= 4096 else 0.1


class LabelTokenEngine(ClassifierBase):
    """``Classifier`` for a causal LM with the label-token head; see the package docstring for how it is fast.

    ``labels`` are the label words that ``label_ids`` are the first tokens of. ``close()`` stops the producer
    process. ``cuda_graphs=True`` replays the forward as CUDA graphs over bucketed batch shapes (``graphs``; on
    CUDA only, eager elsewhere); ``fp8=True`` runs the projections in float8 (``fp8``). ``fused_attention``,
    ``fused_rotary`` and ``fused_mlp`` run those parts of the bf16 forward as single kernels (``fused``): attention
    over the cached prefix without copying it into every row, the rotary embedding of q and k in place, and SiLU(gate)
    * up (left to float8's own kernel when ``fp8`` is on). With ``fp8`` the scores carry a model id of their own,
    derived from ``model_id``; the other options compute the same probabilities to rounding and keep it.
    ``fold_residual`` (on by default; off only to measure it) adds each block's output projections into the
    residual stream inside the matrix product. ``ragged`` (on by default) lays the rows of a batch end to end
    without padding where the fused attention runs eagerly (not on CUDA graphs, whose shapes are bucketed): batches
    are then cut by real tokens alone, so they stay large whatever the mix of lengths; ``max_padding`` bounds the
    padded batches only.
    """

    sizes_own_batches = True

    def __init__(self, model, tokenizer, label_ids: Sequence[int], instruction: str = INSTRUCTION, *,
                 name: str = "llm-engine", model_id: str | None = None,
                 max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS, token_budget: int | None = None,
                 max_batch: int = 4096, max_padding: float | None = None, chunk_size: int = 65536, prefetch: int = 4,
                 attention: Sequence[str] | str | None = None, producer: str | None = None, fp8: bool = False,
                 cuda_graphs: bool = False, fused_attention: bool = False, fused_rotary: bool = False,
                 fused_mlp: bool = False, fold_residual: bool = True, ragged: bool = True,
                 labels: Sequence[str] = LABEL_WORDS):
        import torch

        config = model.config
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelError(f"the GPU engine supports model types {SUPPORTED_MODEL_TYPES}, found "
                             f"{config.model_type!r}: use the reference classifier (screener.classifiers.llm)")
        self.name = name
        self.tokenizer = tokenizer
        self.instruction = instruction
        self.label_ids = tuple(int(i) for i in label_ids)
        self.labels = label_classes(labels)
        if len(self.labels) != len(self.label_ids):
            raise ModelError(f"{len(self.label_ids)} label token ids for the labels {self.labels}: expected one each")
        self._packer = None
        self.max_text_tokens = max_text_tokens
        self.max_batch = max_batch
        self.max_padding = max_padding if max_padding is not None else default_max_padding(config.hidden_size)
        self.fold_residual = fold_residual
        self.chunk_size = chunk_size
        self.prefetch = prefetch
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.on_cuda = self.device.type == "cuda"
        # The scan hands this engine windows of at least this many messages (see screener.scan._score_pending).
        self.min_window_rows = chunk_size if self.on_cuda else 0
        if isinstance(attention, str):
            attention = attention.split("+")
        # cuDNN's attention (torch's first choice on recent GPUs) builds a plan for every new batch shape, and a
        # scan meets new shapes all the time; the memory-efficient kernel needs no plan. Math is the fallback.
        if attention is None and self.on_cuda:
            attention = ("efficient_attention", "math")
        self.attention = tuple(attention or ())
        self.attention_backends()  # an unknown kernel name fails here, not at the first batch
        # About 32k tokens per batch keep an 8B model's matrix products at full speed with a few GB of activations.
        # Smaller models want more rows per batch, up to 64k tokens, past which they gain nothing and only hold
        # more memory.
        budget = max(32768, min(65536, 2**27 // config.hidden_size)) if self.on_cuda else 2048
        self.token_budget = token_budget or budget
        if model_id is None:
            model_id = identity.model_id(identity.LLM_LABELTOKEN_ENGINE, {
                "weights": identity.fingerprint(model), "prompt": list(prompt_prefix_and_suffix(instruction)),
                "label_ids": list(self.label_ids)})
        # Float8 rounding changes some labels: its scores are another model's (fp8.scored_model_id).
        self.model_id = fp8_model_id(model_id) if fp8 else model_id

        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.hidden = config.hidden_size
        decoder = model.get_decoder()
        if any(getattr(layer.self_attn, "sliding_window", None) for layer in decoder.layers):
            raise ModelError("the GPU engine attends over whole prompts and has no sliding-window attention: use "
                             "the reference classifier (screener.classifiers.llm)")
        self._silu = getattr(config, "hidden_act", None) in ("silu", "swish")
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
        self.fused_attention, self.fused_rotary = bool(fused_attention), bool(fused_rotary)
        self.fused_mlp = bool(fused_mlp)
        if self.fp8:
            self._layers = [self._fp8_layer(layer) for layer in self._layers]
        self._cos = self._sin = None
        self._masks: dict[tuple[int, int], object] = {}
        self.prompts = PromptTokenizer(tokenizer, instruction)
        self.prefix_ids = self.prompts.prefix_ids
        self._prefix_kv = self._compute_prefix_kv()
        self.cuda_graphs = bool(cuda_graphs) and self.on_cuda
        self.ragged = bool(ragged) and self.fused_attention and not self.cuda_graphs
        self.buckets = self._graphs = None
        if self.cuda_graphs:
            from screener.classifiers.gpu.graphs import BatchGraphs

            self.buckets = Buckets(self.token_budget, self.max_batch,
                                   width_ladder(self.max_text_tokens + GRAPH_WIDTH_MARGIN))
            # Tables for every position a bucket reaches, made now: a graph reads the tables it was captured with.
            self._rope_tables(len(self.prefix_ids) + self.buckets.widths[-1])
            self._graphs = BatchGraphs(self._probabilities, self.device, self.buckets,
                                       keep=lambda: (self._cos, self._sin))
        # On CPU the forward is far slower than tokenizing, so a process would only add its start-up.
        self.producer = producer or ("process" if self.on_cuda else "thread")
        if self.producer not in ("thread", "process"):
            raise ModelError(f"producer must be 'thread' or 'process', got {self.producer!r}")
        if self.producer == "process":
            self._packer = ProducerProcess(self.prompts, self.prefix_ids)

    @property
    def fast_paths(self) -> FastPaths:
        """The fast paths this engine runs (CUDA graphs only on CUDA)."""
        return FastPaths(fp8=self.fp8, cuda_graphs=self.cuda_graphs,
                         fused=self.fused_attention and self.fused_rotary and self.fused_mlp)

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
                      act=mlp.act_fn, silu=self._silu)

    def _fp8_layer(self, layer: _Layer) -> _Layer:
        """The layer with its four projections in float8: activations are scaled per token at each product."""
        fp8.check_supported(self.device, (layer.wqkv, layer.wo, layer.wgu, layer.wdown))
        return dataclasses.replace(layer, wqkv=fp8.to_fp8(layer.wqkv), wo=fp8.to_fp8(layer.wo),
                                   wgu=fp8.to_fp8(layer.wgu), wdown=fp8.to_fp8(layer.wdown))

    @staticmethod
    def _linear(x, weight, bias, part: slice | None = None):
        """x @ weight[part].T + bias[part], in float8 when the weight is."""
        import torch.nn.functional as F

        if isinstance(weight, fp8.FP8Weight):
            return weight.linear(x, bias, part)
        if part is not None and bias is not None:
            bias = bias[part]
        return F.linear(x, weight if part is None else weight[part], bias)

    # ---- Classifier protocol -------------------------------------------------------------------------------

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        texts = list(texts)
        if not texts:
            return np.empty((0, len(self.labels)), dtype=np.float32)
        out = torch.empty((len(texts), len(self.labels)), dtype=torch.float32, device=self.device)
        batches: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        producer = threading.Thread(target=self._produce, args=(texts, batches, stop), daemon=True)
        producer.start()
        try:
            with torch.inference_mode(), self.attention_backends():
                while (item := batches.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    out.index_copy_(0, item.rows.to(self.device, non_blocking=True), self.run_batch(item))
        finally:
            stop.set()
            producer.join()
        return out.cpu().numpy()

    def run_batch(self, batch: Batch):
        """Class probabilities [rows, labels] of one batch, on the device (call under ``torch.inference_mode()``
        and ``attention_backends()``)."""
        if self._graphs is not None:
            probs = self._graphs.run(batch.ids, batch.last, batch.shared)
            if probs is not None:
                return probs
        ids = batch.ids.to(self.device, non_blocking=True)
        last = batch.last.to(self.device, non_blocking=True)
        if batch.starts is not None:
            return self._ragged_probabilities(ids, batch.starts.to(self.device, non_blocking=True),
                                              batch.positions.to(self.device, non_blocking=True), last,
                                              batch.longest, batch.shared)
        return self._probabilities(ids, last, batch.shared)

    def graph_stats(self) -> dict | None:
        """How the batches ran so far with ``cuda_graphs`` (graphs captured, replays, batches run eagerly to warm
        a bucket, why graphs were turned off), or None without graphs."""
        return None if self._graphs is None else self._graphs.stats()

    def attention_backends(self):
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
        """The batches ``predict_proba`` runs, in order: what the producer does, without the GPU."""
        texts = list(texts)
        # A small first chunk gets the GPU going sooner; later ones are large, so that sorting leaves little
        # padding.
        offsets, start, size = [], 0, min(1024, self.chunk_size)
        while start < len(texts):
            offsets.append((start, size))
            start, size = start + size, min(4 * size, self.chunk_size)
        chunks = (texts[start:start + size] for start, size in offsets)
        options = {"max_text_tokens": self.max_text_tokens, "token_budget": self.token_budget,
                   "max_batch": self.max_batch, "max_padding": self.max_padding, "buckets": self.buckets,
                   "ragged": self.ragged}
        if self._packer is not None:
            packed = self._packer.map(chunks, options)
        else:
            packed = (pack_chunk(self.prompts, self.prefix_ids, chunk, **options) for chunk in chunks)
        # Batches under half the budget wait for the next chunk's rows (packing.regroup).
        keep_below = self.token_budget // 2
        held: list = []
        for n, ((start, _), arrays) in enumerate(zip(offsets, packed), 1):
            small = held
            for ids, last, idx, shared in arrays:
                if ids.size < keep_below:
                    small.append((ids, last, idx + start, shared))
                else:
                    yield self._batch(ids, last, idx + start, shared)
            run, held = regroup(small, self.token_budget, self.max_batch, self.max_padding, keep_below, self.buckets,
                                final=n == len(offsets))
            for arrays in run:
                yield self._batch(*arrays)

    def _batch(self, ids, last, rows, shared: int) -> Batch:
        import torch

        arrays, longest = [ids, last, rows], 0
        if ids.ndim == 1:
            lengths = last + 1
            starts = np.zeros(len(lengths) + 1, dtype=np.int32)
            np.cumsum(lengths, out=starts[1:])
            arrays += [starts, np.arange(ids.size, dtype=np.int64) - np.repeat(starts[:-1].astype(np.int64), lengths)]
            longest = int(lengths.max())
        tensors = [torch.from_numpy(a) for a in arrays]
        if self.on_cuda:
            tensors = [t.pin_memory() for t in tensors]
        ids, last, rows, *ragged = tensors
        return Batch(ids, last, rows, shared, *ragged, longest=longest)

    def close(self) -> None:
        """Stops the producer process, if any (it also stops with this process), and drops the CUDA graphs."""
        if self._packer is not None:
            self._packer.close()
            self._packer = None
        if self._graphs is not None:
            self._graphs.release()

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
        k = fused.rotate_(k, cos, sin) if self.fused_rotary else self._rotate(k, cos[:, None, :], sin[:, None, :])
        return k.transpose(1, 2), v.transpose(1, 2)

    def _block(self, x, layer: _Layer, cos, sin, prefix_kv, mask, ragged=None):
        """One decoder layer over every position of x [rows, width, hidden]; ``ragged`` (starts, longest): x is
        a ragged batch's rows end to end [1, tokens, hidden] (fused attention only)."""
        import torch
        import torch.nn.functional as F

        rows, width, _ = x.shape
        groups = self.n_heads // self.n_kv
        q_size, kv_size = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        qkv = self._linear(self._norm(x, layer.ln1, layer.eps1), layer.wqkv, layer.bqkv)
        # q and k are adjacent in the fused output: one rotation covers both heads' kinds.
        qk = qkv[..., : q_size + kv_size].view(rows, width, self.n_heads + self.n_kv, self.head_dim)
        if self.fused_rotary:
            qk = fused.rotate_(qk, cos, sin)
        else:
            qk = self._rotate(qk, cos[:, None, :], sin[:, None, :])
        if self.fused_attention:
            v = qkv[..., q_size + kv_size:].view(rows, width, self.n_kv, self.head_dim)
            pk, pv = prefix_kv if prefix_kv is not None else (None, None)
            o = fused.prefix_attention(qk, v, pk, pv, self.n_heads, self._scaling, *(ragged or ()))
            x = self._plus_linear(x, o, layer.wo, layer.bo)
            return self._mlp(self._norm(x, layer.ln2, layer.eps2), layer, x)
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
        x = self._plus_linear(x, o, layer.wo, layer.bo)
        return self._mlp(self._norm(x, layer.ln2, layer.eps2), layer, x)

    def _norm(self, x, weight, eps: float):
        """RMSNorm of x; with float8 already in the float8 form the projection after it takes (one pass)."""
        import torch.nn.functional as F

        if self.fp8:
            return fp8.rms_norm_quantize(x, weight, eps)
        return F.rms_norm(x, (self.hidden,), weight, eps)

    def _mlp(self, h, layer: _Layer, residual):
        """residual + the feed-forward block of h."""
        gate_up = self._linear(h, layer.wgu, layer.bgu)
        if self.fp8 and layer.silu:
            return self._plus_linear(residual, fp8.silu_mul_quantize(gate_up), layer.wdown, layer.bdown)
        if self.fused_mlp and layer.silu:
            return self._plus_linear(residual, fused.silu_mul(gate_up), layer.wdown, layer.bdown)
        gate, up = gate_up.chunk(2, dim=-1)
        return self._plus_linear(residual, layer.act(gate) * up, layer.wdown, layer.bdown)

    def _plus_linear(self, residual, x, weight, bias):
        """residual + x @ weight.T + bias. In bf16 without a bias, the product is accumulated into ``residual`` in
        place (one matrix product with beta=1, which reads the residual in its epilogue) instead of a separate add
        over the hidden states; ``residual`` is always a tensor this forward made and reads no more."""
        if (not self.fold_residual or bias is not None or isinstance(weight, fp8.FP8Weight)
                or not residual.is_contiguous()):
            return residual + self._linear(x, weight, bias)
        residual.view(-1, residual.shape[-1]).addmm_(x.reshape(-1, x.shape[-1]), weight.t())
        return residual

    def _last_block(self, x, layer: _Layer, cos, sin, prefix_kv, last, shared: int):
        """The last decoder layer, evaluated at each row's last real position only: [rows, hidden]."""
        import torch

        h = self._norm(x, layer.ln1, layer.eps1)
        k, v = self._keys_values(h, layer, cos, sin)
        index = torch.arange(x.shape[0], device=x.device)
        return self._last_queries(x[index, last], h[index, last], k, v, layer, prefix_kv, last, shared)

    def _last_queries(self, x_last, h_last, k, v, layer: _Layer, prefix_kv, last, shared: int):
        """The last layer for the rows' last positions (x_last, h_last [rows, hidden]) over their rows' keys and
        values k, v [rows, kv_heads, width, head_dim]: [rows, hidden]."""
        import torch
        import torch.nn.functional as F

        rows, _, width, _ = k.shape
        groups = self.n_heads // self.n_kv
        q_size = self.n_heads * self.head_dim
        if prefix_kv is not None:
            k = torch.cat((prefix_kv[0].expand(rows, -1, -1, -1), k), 2)
            v = torch.cat((prefix_kv[1].expand(rows, -1, -1, -1), v), 2)
        q = self._linear(h_last, layer.wqkv, layer.bqkv, slice(None, q_size))
        q = q.view(rows, self.n_kv, groups, self.head_dim)
        full_cos, full_sin = self._rope_tables(shared + width)
        q = self._rotate(q, full_cos[shared + last][:, None, None, :], full_sin[shared + last][:, None, None, :])
        blocked = torch.arange(shared + width, device=k.device)[None, :] > (shared + last)[:, None]
        mask = torch.zeros(blocked.shape, dtype=k.dtype, device=k.device).masked_fill_(blocked, float("-inf"))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], scale=self._scaling)
        x_last = self._plus_linear(x_last, o.reshape(rows, -1), layer.wo, layer.bo)
        return self._mlp(self._norm(x_last, layer.ln2, layer.eps2), layer, x_last)

    def _probabilities(self, ids, last, shared: int):
        """Class probabilities [rows, labels] float32 for right-padded ids whose prompts start with ``shared``
        cached tokens."""
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
        return self._head_probabilities(x)

    def _head_probabilities(self, x):
        import torch
        import torch.nn.functional as F

        x = F.rms_norm(x, (self.hidden,), self._final_norm[0], self._final_norm[1])
        logits = F.linear(x, self._head, self._head_bias).float()
        return torch.softmax(logits, dim=-1)

    def _ragged_probabilities(self, ids, starts, positions, last, longest: int, shared: int):
        """``_probabilities`` of a ragged batch: ids [tokens] holding the rows end to end (row i from starts[i]),
        each token at ``positions`` within its row, the longest row ``longest`` tokens."""
        import torch

        full_cos, full_sin = self._rope_tables(shared + longest)
        cos, sin = full_cos[shared + positions], full_sin[shared + positions]
        x = self._embed(ids)[None]
        prefix = [(k[:, :, :shared], v[:, :, :shared]) if shared else None for k, v in self._prefix_kv]
        for layer, kv in zip(self._layers[:-1], prefix[:-1]):
            x = self._block(x, layer, cos, sin, kv, None, (starts, longest))
        layer = self._layers[-1]
        h = self._norm(x, layer.ln1, layer.eps1)
        k, v = self._keys_values(h, layer, cos, sin)
        # Each row's keys and values from its first token on, padded to the longest (past a row's end the mask
        # blocks what the clamped index reads).
        spread = (starts[:-1, None] + torch.arange(longest, device=ids.device)).clamp_(max=ids.shape[0] - 1)
        k, v = k[0][:, spread].transpose(0, 1), v[0][:, spread].transpose(0, 1)
        ends = starts[1:].long() - 1
        x = self._last_queries(x[0, ends], h[0, ends], k, v, layer, prefix[-1], last, shared)
        return self._head_probabilities(x)

    def _compute_prefix_kv(self):
        """Keys and values [1, kv_heads, prefix, head_dim] of every layer for the cached prompt prefix."""
        import torch

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
                cache.append(self._keys_values(self._norm(x, layer.ln1, layer.eps1), layer, cos, sin))
                if i + 1 < len(self._layers):
                    x = self._block(x, layer, cos, sin, None, mask)
        return cache
