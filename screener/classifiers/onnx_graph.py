"""The graph the ONNX backend exports an encoder classifier as, and its operator fusion.

Both forms take ``input_ids`` and ``attention_mask`` (right-padded) and return the softmax of the logits in fp32:

- ``bert-first-token``, for a BERT sequence classifier (``BertForSequenceClassification`` with absolute positions):
  the encoder written out layer by layer from the model's own modules, so that the last layer computes its
  attention query, attention output and feed-forward block for the first token only. The head reads the first
  token's output and nothing else, and the other tokens' keys and values in the last layer come from the layer
  before it, so this is the same function without most of the last layer's matrix products.
- ``transformers``: the model's own forward, for every other architecture.

``optimize`` then fuses what ONNX Runtime's transformer optimizer finds in the exported graph (residual additions
with their layer norms into SkipLayerNormalization, the feed-forward bias with its GELU into BiasGelu), kernels
that compute the same values in fewer passes over memory. The export checks the finished graph against the torch
model before it is cached (``screener.classifiers.onnx``), so a graph that does not compute what the model
computes is never used.
"""

from __future__ import annotations

from pathlib import Path

FIRST_TOKEN = "bert-first-token"
TRANSFORMERS = "transformers"


def first_token_supported(model) -> bool:
    """Whether ``bert-first-token`` can express the model: a plain BERT encoder under a first-token head."""
    config = model.config
    return (type(model).__name__ == "BertForSequenceClassification"
            and getattr(config, "model_type", None) == "bert"
            and getattr(config, "position_embedding_type", "absolute") == "absolute"
            and not getattr(config, "is_decoder", False)
            and getattr(model.bert, "pooler", None) is not None
            and len(model.bert.encoder.layer) >= 1)


def graph_module(model):
    """(the module to export, its form's name) for a loaded sequence classifier in eval mode."""
    if first_token_supported(model):
        return first_token_module(model).eval(), FIRST_TOKEN
    return probabilities_module(model).eval(), TRANSFORMERS


def probabilities_module(model):
    """The model with the softmax of its logits as its one output, in fp32 as the torch path computes it."""
    import torch

    class _Probabilities(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            logits = self.inner(input_ids=input_ids, attention_mask=attention_mask).logits
            return torch.softmax(logits.float(), dim=-1)

    return _Probabilities(model)


def first_token_module(model):
    """A BERT sequence classifier's forward whose last layer works on the first token only."""
    import torch

    class _FirstTokenBert(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            config = inner.config
            self.heads = config.num_attention_heads
            self.head_size = config.hidden_size // config.num_attention_heads

        def attention(self, layer, states, queries, additive_mask):
            """The attention block of ``layer``: ``queries`` (a leading slice of ``states``) attend to every
            position of ``states``; residual and layer norm included."""
            self_attention = layer.attention.self
            rows = states.shape[0]

            def split(x):
                return x.view(rows, -1, self.heads, self.head_size).transpose(1, 2)

            query = split(self_attention.query(queries))
            key = split(self_attention.key(states))
            value = split(self_attention.value(states))
            scaling = getattr(self_attention, "scaling", self.head_size ** -0.5)
            weights = torch.matmul(query, key.transpose(2, 3)) * scaling + additive_mask
            context = torch.matmul(torch.softmax(weights, dim=-1), value)
            context = context.transpose(1, 2).reshape(rows, -1, self.heads * self.head_size)
            output = layer.attention.output
            return output.LayerNorm(output.dense(context) + queries)

        @staticmethod
        def feed_forward(layer, states):
            return layer.output.LayerNorm(layer.output.dense(layer.intermediate(states)) + states)

        def forward(self, input_ids, attention_mask):
            bert = self.inner.bert
            embeddings = bert.embeddings
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
            states = embeddings.word_embeddings(input_ids) + embeddings.token_type_embeddings.weight[0]
            states = embeddings.LayerNorm(states + embeddings.position_embeddings(positions))
            additive_mask = ((1.0 - attention_mask[:, None, None, :].to(states.dtype))
                             * torch.finfo(states.dtype).min)
            *layers, last = bert.encoder.layer
            for layer in layers:
                states = self.feed_forward(layer, self.attention(layer, states, states, additive_mask))
            first = self.feed_forward(last, self.attention(last, states, states[:, :1], additive_mask))
            pooled = bert.pooler.activation(bert.pooler.dense(first[:, 0]))
            return torch.softmax(self.inner.classifier(pooled).float(), dim=-1)

    return _FirstTokenBert(model)


def optimize(path: Path, num_heads: int, hidden_size: int) -> list[str]:
    """Fuse ``path``'s operators in place with ONNX Runtime's transformer optimizer (its graph fusions only: ONNX
    Runtime's own optimizations run again when a session opens it); returns the fused operator types found."""
    import logging

    from onnxruntime.transformers import optimizer

    # The optimizer reports each fusion on the root logger at INFO and WARNING.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        model = optimizer.optimize_model(str(path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                                         opt_level=0)
        model.save_model_to_file(str(path), use_external_data_format=False)
        fused = model.get_fused_operator_statistics()
    finally:
        logging.disable(previous)
    return sorted(op for op, count in fused.items() if count)
