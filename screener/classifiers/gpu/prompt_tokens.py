"""Token ids of Alpaca prompts, tokenized the cheap way, and how much of each prompt the cached prefix covers."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from screener.prompt import DEFAULT_MAX_TEXT_TOKENS, INSTRUCTION, alpaca_prompt, cut_to_tokens, prompt_prefix_and_suffix


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
PROBES = ("", "x", " x", "  x", "\n", "\nx", "\n\nx", " \n x", "x\n", "x\n\n", "x ", ":", "###", "#x", "'s",
          "123", "é", "日本語", "😀", "\t", "\r\nx", "a" * 40, "Response:", "\n\n### Response:\n")


class PromptTokenizer:
    """Token ids of each text's Alpaca prompt, exactly as ``tokenizer(alpaca_prompt(text))`` gives them.

    Most of every prompt is the constant text before the message. When the tokenizer always splits before the
    prompt's last line ("### Input:\\n", checked once on probe texts), only that line, the message and the suffix
    are tokenized per message, and ``head`` holds the constant ids before them: a fraction of the tokenizer work.
    A tokenizer that does not split there (one that marks the start of a string, say) gets whole prompts, and
    ``head`` is empty.

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
        wholes = self._whole(list(PROBES))
        tails = self._tails(list(PROBES))
        head = wholes[0][: len(wholes[0]) - len(tails[0])]
        self.anchored = (cut > 1 and self.prefix_ids[: len(head)] == head
                         and all(w == head + t for w, t in zip(wholes, tails)))
        self.head = head if self.anchored else []

    def _whole(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer([alpaca_prompt(t, self.instruction) for t in texts])["input_ids"]

    def _tails(self, texts: list[str]) -> list[list[int]]:
        strings = [self._anchor + t + self._suffix for t in texts]
        backend = self._backend
        # The backend tokenizer skips transformers' per-text dictionaries (much of the CPU time here); it is used
        # only while no truncation or padding is set on it, when it returns what tokenizer(...) returns.
        if backend is not None and backend.truncation is None and backend.padding is None:
            return [e.ids for e in backend.encode_batch(strings, add_special_tokens=False)]
        return self.tokenizer(strings, add_special_tokens=False)["input_ids"]

    def parts(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's prompt ids after ``head``, uncut: the one tokenizer call per message."""
        return (self._tails if self.anchored else self._whole)(list(texts))

    def split(self, texts: Sequence[str], max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS) -> list[list[int]]:
        """Each text's prompt ids after ``head`` (so that ``head + ids`` is the whole prompt's), long texts cut."""
        texts = list(texts)
        if not texts:
            return []
        out = self.parts(texts)
        limit = max_text_tokens - len(self.head)
        for i, text in enumerate(texts):
            if len(out[i]) <= limit:
                continue
            cut = cut_to_tokens(self.tokenizer, text, max_text_tokens)
            if cut is not None:
                out[i] = self.parts([cut])[0]
        return out

    def encode(self, texts: Sequence[str], max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS) -> list[list[int]]:
        return [self.head + ids for ids in self.split(texts, max_text_tokens)]
