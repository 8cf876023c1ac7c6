"""Batch planning: prompts sorted, cut into batches under a token budget (and, padded, a padding bound), packed as
arrays.

A batch is padded (ids [rows, width], each row right padded) or ragged (ids [tokens]: the rows laid end to end, no
padding, for the forward whose attention reads each row by its offsets); ``last`` is each row's last position within
its row either way, so a ragged batch's row lengths are ``last + 1``.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from screener.classifiers.gpu.buckets import Buckets
from screener.classifiers.gpu.prompt_tokens import PromptTokenizer, shared_prefix_lengths


def padded_width(longest: int, buckets: Buckets | None) -> int:
    """The width a batch whose longest row has ``longest`` tokens is padded to: its bucket's, or ``longest`` without
    buckets or beyond their ladder."""
    rounded = buckets.width(longest) if buckets is not None else None
    return longest if rounded is None else rounded


def plan_batches(lengths: np.ndarray, shared: np.ndarray, token_budget: int, max_batch: int,
                 max_padding: float = 0.1, buckets: Buckets | None = None, ragged: bool = False) -> list[np.ndarray]:
    """Indices of each batch: rows sorted by (shared prefix, length) and cut so that rows x longest stays within
    the token budget and within ``1 + max_padding`` times the batch's real tokens; ``ragged``, so that the real
    tokens stay within the budget (rows of any length share a batch, which has no padding).

    A batch never mixes shared-prefix lengths (they need different cached keys); a row longer than the budget gets
    a batch of its own. With ``buckets`` the budget holds for the longest rounded up to its bucket width, and a
    batch is cut back to a whole number of its width's row steps (the rows cut off start the next batch), so that
    padding batches to their bucket's rows adds little.
    """
    order = np.lexsort((lengths, shared))
    batches = []
    start, n = 0, len(order)
    while start < n:
        end, real = start + 1, int(lengths[order[start]])
        while end < n and end - start < max_batch and shared[order[end]] == shared[order[start]]:
            longest = int(lengths[order[end]])
            rows = end - start + 1
            if ragged:
                if real + longest > token_budget:
                    break
            elif (rows * padded_width(longest, buckets) > token_budget
                    or rows * longest > (1 + max_padding) * (real + longest)):
                break
            real += longest
            end += 1
        bucket = buckets.width(int(lengths[order[end - 1]])) if buckets is not None and not ragged else None
        if bucket is not None and end - start > buckets.row_step(bucket):
            end = start + (end - start) // buckets.row_step(bucket) * buckets.row_step(bucket)
        batches.append(order[start:end])
        start = end
    return batches


def pack_chunk(prompts: PromptTokenizer, prefix_ids: Sequence[int], texts: Sequence[str], *, max_text_tokens: int,
               token_budget: int, max_batch: int, max_padding: float, buckets: Buckets | None = None,
               ragged: bool = False) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """The batches for ``texts`` as numpy arrays: (right-padded ids [rows, width], or with ``ragged`` the rows end
    to end [tokens]; index of each row's last real token within its row; position of each row in ``texts``; cached
    prefix tokens the rows reuse).

    Pure CPU work with no engine state, so that it can run in the producer thread or in a producer process.
    Prompts come as head + part, the head's ids shared by all; only the parts are per message. The parts are laid
    end to end in one array and every batch is gathered from it by numpy: per-row Python here would hold the GIL
    that the thread launching GPU work needs. With ``buckets`` (see ``plan_batches``) the ids are padded to the
    bucket width, so that they copy straight into a captured graph's input.
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
    for idx in plan_batches(lengths, skips + head, token_budget, max_batch, max_padding, buckets, ragged):
        skip = int(skips[idx[0]])
        if ragged:
            out.append((end_to_end(flat, starts[idx] + skip, lengths[idx]), lengths[idx] - 1, idx, skip + head))
            continue
        longest = int(lengths[idx].max())
        cols = np.arange(padded_width(longest, buckets))
        source = np.minimum(starts[idx, None] + skip + cols, len(flat) - 1)
        ids = np.where(cols < lengths[idx, None], flat[source], 0)
        out.append((ids, lengths[idx] - 1, idx, skip + head))
    return out


def end_to_end(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The tokens flat[starts[i]:starts[i] + lengths[i]] of every row i, laid end to end."""
    offsets = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    within = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(offsets, lengths)
    return flat[np.repeat(starts, lengths) + within]


def regroup(small: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]], token_budget: int, max_batch: int,
            max_padding: float, keep_below: int, buckets: Buckets | None = None, final: bool = False):
    """Batches of ``pack_chunk``'s shape planned again over the rows of ``small`` (batches under ``keep_below``
    padded tokens, from one chunk or several): (the batches to run, the batches to hold back for the next chunk).

    Each chunk is planned alone, and its few rows of each length, at its start and at each length's end, make
    batches of a few hundred tokens whose matrix products run far below speed. Held back and planned with the
    next chunk's, they fill batches of a sensible size; with ``final`` nothing is held back. Ragged batches (all of
    ``small`` alike) are planned again as ragged ones.
    """
    if not small:
        return [], []
    lengths = np.concatenate([last for _, last, _, _ in small]) + 1
    shared = np.concatenate([np.full(len(last), s, dtype=np.int64) for _, last, _, s in small])
    rows_at = np.concatenate([idx for _, _, idx, _ in small])
    if small[0][0].ndim == 1:
        return _regroup_ragged(small, lengths, shared, rows_at, token_budget, max_batch, keep_below, final)
    # Bucket widths grow with the length, so the widest batch of any plan of these rows fits this.
    ids = np.zeros((len(lengths), padded_width(int(lengths.max()), buckets)), dtype=np.int64)
    start = 0
    for batch_ids, _, _, _ in small:
        ids[start:start + len(batch_ids), : batch_ids.shape[1]] = batch_ids
        start += len(batch_ids)
    run, held = [], []
    for sel in plan_batches(lengths, shared, token_budget, max_batch, max_padding, buckets):
        cols = padded_width(int(lengths[sel].max()), buckets)
        batch = (ids[sel, :cols], lengths[sel] - 1, rows_at[sel], int(shared[sel[0]]))
        (run if final or len(sel) * cols >= keep_below else held).append(batch)
    return run, held


def _regroup_ragged(small, lengths, shared, rows_at, token_budget: int, max_batch: int, keep_below: int,
                    final: bool):
    flat = np.concatenate([ids for ids, _, _, _ in small])
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    run, held = [], []
    for sel in plan_batches(lengths, shared, token_budget, max_batch, ragged=True):
        batch = (end_to_end(flat, starts[sel], lengths[sel]), lengths[sel] - 1, rows_at[sel], int(shared[sel[0]]))
        (run if final or batch[0].size >= keep_below else held).append(batch)
    return run, held
