"""The int8 form of an encoder's ONNX export: dynamic quantization of its weight matrix products, with SmoothQuant.

``onnxruntime.quantization.quantize_dynamic`` gives each weight product int8 weights per output channel and
quantizes its activation per call with one scale for the whole tensor. In a BERT the hidden states have a few
channels far larger than the rest, so that one scale leaves most channels only a few of int8's levels. SmoothQuant
(Xiao et al., 2023) moves that range into the weights, where int8 has a scale per channel: each activation read by
quantized products is divided, channel by channel, by

    s = absmax(x) ** alpha / absmax(W rows) ** (1 - alpha)

in one ``Mul`` before the products, and the products' weight rows are multiplied by ``s``, so the fp32 graph
computes the same function (to rounding) before it is quantized. ``absmax(x)`` is measured on calibration texts
the model folder ships (``onnx_calibration``), run through the fp32 export; ``alpha`` is ``onnx_smoothing`` in the
manifest. A model that declares neither is quantized without smoothing.

Which products: the query, key and value projections, the attention output and the feed-forward up projection.
The feed-forward down projections read the GELU's output, which is one-sided and heavy-tailed: unsmoothed int8
there moved labels on every model measured (``benchmarks/onnx_int8_variants.py``), so they stay fp32 unless the
manifest gives them an alpha of their own (``onnx_down_smoothing``), smoothed apart from the other products.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from screener.errors import ModelError

KINDS = ("qkv", "attention_output", "ffn_up", "ffn_down")
QUANTIZED_KINDS = ("qkv", "attention_output", "ffn_up")
RECIPE = {"method": "dynamic", "weight_type": "QInt8", "per_channel": True, "reduce_range": False,
          "op_types": ["MatMul"], "fp32": "gelu-output"}

GELU_OPS = ("Gelu", "FastGelu", "BiasGelu", "Erf", "Tanh")
# The elementwise ops of a GELU that no fusion made one node: x * 0.5 * (1 + erf(x / sqrt(2))), or its tanh form.
GELU_PARTS = ("Mul", "Add", "Div", "Pow")
# Channels that calibration never saw above this are treated as this, so s stays finite.
FLOOR = 1e-5


@dataclass(frozen=True)
class Smoothing:
    """The manifest's smoothing: alpha for the recipe's products, the calibration texts, and the down projections'
    alpha where they are int8 too."""

    alpha: float
    calibration: Path
    down_alpha: float | None = None


def fp32_matmuls(model) -> list[str]:
    """The matrix products that read a GELU's output (the feed-forward down projections): a Gelu node, or the
    elementwise ops of its erf or tanh form."""
    producers = {out: node for node in model.graph.node for out in node.output}
    initializers = {init.name for init in model.graph.initializer}

    def gelu_output(name: str, depth: int) -> bool:
        node = producers.get(name)
        if node is None or depth == 0:
            return False
        if node.op_type in GELU_OPS:
            return True
        return node.op_type in GELU_PARTS and any(gelu_output(inp, depth - 1) for inp in node.input
                                                  if inp not in initializers)

    return [node.name for node in model.graph.node if node.op_type == "MatMul"
            and any(gelu_output(inp, 4) for inp in node.input if inp not in initializers)]


def matmul_kinds(model) -> dict[str, list[str]]:
    """The weight matrix products of an exported encoder by kind, from the graph's structure: the down projection
    reads a GELU, the up projection writes the down projection's input width, the attention output reads the
    reshaped attention context; the rest are the query, key and value projections."""
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    down = set(fp32_matmuls(model))
    products = [node for node in model.graph.node if node.op_type == "MatMul" and any(i in weights for i in node.input)]
    inner = {weights[weight_input(node, weights)][0] for node in products if node.name in down}
    kinds: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for node in products:
        weight = weights[weight_input(node, weights)]
        source = producers.get(activation_input(node, weights))
        if node.name in down:
            kinds["ffn_down"].append(node.name)
        elif weight[1] in inner:
            kinds["ffn_up"].append(node.name)
        elif source is not None and source.op_type in ("Reshape", "Transpose"):
            kinds["attention_output"].append(node.name)
        else:
            kinds["qkv"].append(node.name)
    return kinds


def weight_input(node, weights) -> str:
    return next(i for i in node.input if i in weights)


def activation_input(node, weights) -> str:
    return next(i for i in node.input if i not in weights)


def quantized_nodes(model) -> list[str]:
    kinds = matmul_kinds(model)
    return [name for kind in QUANTIZED_KINDS for name in kinds[kind]]


def activation_absmax(model, names: list[str], feeds: list[dict]) -> dict[str, np.ndarray]:
    """Each named activation's largest magnitude per channel (its last axis) over the calibration batches."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in names:
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    amax: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed)):
            channel = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            amax[name] = np.maximum(amax[name], channel) if name in amax else channel
    return amax


def smooth(model, nodes: list[str], alpha: float, feeds: list[dict]) -> None:
    """SmoothQuant ``model`` in place for the products named in ``nodes`` (module docstring)."""
    from onnx import helper, numpy_helper
    from onnxruntime.transformers.onnx_model import OnnxModel

    weights = {init.name: init for init in model.graph.initializer}
    readers: dict[str, list] = {}
    for node in model.graph.node:
        if node.name in nodes:
            readers.setdefault(activation_input(node, weights), []).append(node)
    amax = activation_absmax(model, list(readers), feeds)
    for x, products in readers.items():
        w_max = np.max([np.abs(numpy_helper.to_array(weights[weight_input(n, weights)])).max(axis=1)
                        for n in products], axis=0)
        s = (np.maximum(amax[x], FLOOR) ** alpha / np.maximum(w_max, FLOOR) ** (1 - alpha)).astype(np.float32)
        inverse = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{x}.smooth_inverse")
        model.graph.initializer.append(inverse)
        smoothed = f"{x}.smoothed"
        model.graph.node.append(helper.make_node("Mul", [x, inverse.name], [smoothed], name=f"{x}.smooth"))
        for node in products:
            name = weight_input(node, weights)
            scaled = numpy_helper.to_array(weights[name]) * s[:, None]
            weights[name].CopyFrom(numpy_helper.from_array(scaled.astype(np.float32), name))
            node.input[list(node.input).index(x)] = smoothed
    OnnxModel.graph_topological_sort(model.graph)


def quantize(source: Path, target: Path, smoothing: Smoothing | None = None, feeds: list[dict] | None = None) -> None:
    """Write the int8 form of the fp32 export ``source`` to ``target``, smoothed first where ``smoothing`` is given
    (with ``feeds``, the calibration batches)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source))
    nodes = quantized_nodes(model)
    if not nodes:
        raise ModelError(f"cannot quantize {source} to int8: found no query, key, value, attention output or "
                         "feed-forward products in the graph")
    down = matmul_kinds(model)["ffn_down"] if smoothing is not None and smoothing.down_alpha is not None else []
    keep = [node.name for node in model.graph.node if node.op_type == "MatMul" and node.name not in nodes + down]
    # The quantizer reports every tensor on the root logger at INFO, and advises pre-processing at WARNING.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        if smoothing is not None:
            smooth(model, nodes, smoothing.alpha, feeds or [])
            if down:
                smooth(model, down, smoothing.down_alpha, feeds or [])
        quantize_dynamic(model, str(target), weight_type=QuantType.QInt8, per_channel=RECIPE["per_channel"],
                         reduce_range=RECIPE["reduce_range"], op_types_to_quantize=RECIPE["op_types"],
                         nodes_to_exclude=keep)
    except ModelError:
        raise
    except Exception as exc:  # onnx, onnxruntime and its quantizer raise plain exceptions of many types
        raise ModelError(f"cannot quantize {source} to int8: {type(exc).__name__}: {exc}") from exc
    finally:
        logging.disable(previous)
