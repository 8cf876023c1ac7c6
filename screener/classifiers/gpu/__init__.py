"""The GPU engine for ``llm-labeltoken`` models: the reference classifier's probabilities at the GPU's limit.

It computes exactly what ``screener.classifiers.llm`` computes (softmax over the label-token logits at the last
position of the Alpaca prompt, never ``generate()``), but spends the GPU only on work that differs per message:

- The Alpaca prefix is the same for every message: its keys and values are computed once per engine, and every
  batch attends to them instead of recomputing it per message. A message whose first characters merge with the
  prefix's last token (a text starting with a newline, say) reuses the longest prefix its own tokenization shares
  with the cached one, so results never depend on where the tokenizer splits (``prompt_tokens``).
- Messages are sorted by token count and cut into batches under a token budget and a padding bound, so padding
  costs little (``packing``); the small batches each chunk of a call leaves are held back and planned again with
  the next chunk's rows, so that matrix products seldom run on a few hundred tokens. Right padding under a causal
  mask needs no per-row mask: no real token attends to the padding after it.
- q/k/v and gate/up are one matrix product each, normalisation uses torch's fused RMSNorm, grouped-query heads
  are folded into the query length, the last layer runs at each row's last position only, and the head multiplies
  by the label rows only (``runner``). ``fp8=True`` runs the projections in float8, each activation scaled and
  cast in one pass fused with the norm or the SiLU before it (``fp8``, its Triton kernels in ``fp8_kernels``).
- ``cuda_graphs=True`` replays the forward as CUDA graphs, one per batch shape: batches are planned and padded
  to a few bucketed shapes (``buckets``, ``graphs``). Both options are off by default.
- ``fused_attention``, ``fused_rotary`` and ``fused_mlp`` (off by default) run attention over the cached prefix
  without copying it into every row, the rotary embedding of q and k, and SiLU(gate) * up as one Triton kernel
  each (``fused``, its kernels in ``fused_kernels``). With them and without CUDA graphs (``ragged=True``, the
  default), batches are ragged: rows laid end to end with no padding, cut by real tokens alone, the attention
  kernel reading each row by its offset, the last layer gathering each row's final position.
- ``fast_paths``: these options as a scan chooses them (the settings ``gpu_fp8``, ``gpu_cuda_graphs``,
  ``gpu_fused``), and what happens where they cannot apply.
- On CUDA a producer process tokenizes and packs the next batches while the GPU runs the current one
  (``producer``): in a thread of the engine's own process the tokenizer would hold the GIL that the thread
  launching kernels needs.
- Several GPUs of one host: ``MultiGPUEngine`` runs one worker process per GPU and gives each a disjoint,
  token-balanced share of every call (``multi``).
- ``loader`` builds all of this from a model folder and is the ``llm-labeltoken`` kind's loader.

The producer and the GPU workers are started with ``spawn`` (fork would copy CUDA state and the tokenizer's
threads), so a script that loads the engine must guard its entry point with ``if __name__ == "__main__":``;
the engine refuses to start them from a script without one, and a child that cannot start or dies is a
``ModelError`` at once (``child``).
The same code runs on CPU (torch's SDPA), which is how the tests check it against a plain padded forward.
"""
