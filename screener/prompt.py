"""The Alpaca prompt and label words shared by LLM training (training/) and LLM scoring (screener/).

Training and scoring must build byte-identical prompts and read the same label tokens, so both import this module.
"""

from __future__ import annotations

from typing import Sequence

from screener.classifiers.base import NEGATIVE
from screener.errors import ModelError

INSTRUCTION = "Classify the sentiment of the following text."

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)

# The label words name the classes; P(negative) is what the scan stores.
LABEL_WORDS = ("negative", "positive")
# Message tokens kept in a prompt unless a manifest says otherwise.
DEFAULT_MAX_TEXT_TOKENS = 512


def alpaca_prompt(text: str, instruction: str = INSTRUCTION) -> str:
    """The prompt up to and including 'Response:\\n'; the label word is the next token."""
    return ALPACA_TEMPLATE.format(instruction=instruction, input=text)


def prompt_prefix_and_suffix(instruction: str = INSTRUCTION) -> tuple[str, str]:
    """The constant text before and after the message, so a scorer can cache the prefix's KV once."""
    marker = "\x00"
    prefix, suffix = alpaca_prompt(marker, instruction).split(marker)
    return prefix, suffix


def label_classes(words: Sequence[str]) -> tuple[str, ...]:
    """The classes that label words score, in column order: the words themselves, one of them ``negative``."""
    labels = tuple(str(w) for w in words)
    if len(labels) < 2 or NEGATIVE not in labels or len(set(labels)) < len(labels):
        raise ModelError(f"label words {list(words)}: expected two or more distinct words, one of them "
                         f"{NEGATIVE!r} (the class whose probability the scan stores)")
    return labels


def label_token_ids(tokenizer, words: tuple[str, ...] = LABEL_WORDS) -> tuple[int, ...]:
    """First token id of each label word as it follows the prompt (no leading space after the newline)."""
    ids = []
    for word in words:
        toks = tokenizer(word, add_special_tokens=False)["input_ids"]
        if not toks:
            raise ValueError(f"label word {word!r} tokenizes to nothing")
        ids.append(toks[0])
    if len(set(ids)) < len(ids):
        raise ValueError(f"label words {tuple(words)} share a first token ({ids}); pick words that differ")
    return tuple(ids)


def cut_to_tokens(tokenizer, text: str, max_text_tokens: int) -> str | None:
    """The message cut to its first ``max_text_tokens`` tokens (decoded back to text), or None when it fits.

    The one truncation rule of the label-token classifiers: the reference classifier and the GPU engine both
    prompt the cut text, so they give the same probability for every message.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_text_tokens:
        return None
    return tokenizer.decode(ids[:max_text_tokens])
