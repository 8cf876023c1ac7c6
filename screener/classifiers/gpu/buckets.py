"""Batch shapes for CUDA graphs: a fixed ladder of widths, and row counts in steps of what a width's budget allows.

A captured graph replays one shape only, so batches are rounded up to a few shapes. Widths are every integer to
32, then steps of one sixteenth of the width (2 to 64, 4 to 128, ...), so rounding a width up wastes at most 6%.
The rows a batch may have at width w are ``min(max_batch, token_budget // w)``; row counts come in sixteenths of
that (the planner cuts full batches to whole steps), and below one step in 1, 2, 3, 4, 6, 8, 12, 16, ... (the
small batches at the start of a call and at each length's end), which keeps the shapes to a few per width
whatever the mix of message lengths.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


def small_rows(rows: int) -> int:
    """The smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two and one and a half times them) >= rows."""
    power = 1
    while True:
        for candidate in (power, power + power // 2):
            if candidate >= rows:
                return candidate
        power *= 2


def width_ladder(largest: int) -> tuple[int, ...]:
    """The bucket widths, ascending, up to the first one at or above ``largest``."""
    widths, w = [], 1
    while True:
        widths.append(w)
        if w >= largest:
            return tuple(widths)
        w += 1 if w < 32 else 2 ** (w.bit_length() - 5)


@dataclass(frozen=True)
class Buckets:
    """The shapes batches are padded to; ``shape`` is None for a batch no bucket holds (it runs eagerly)."""

    token_budget: int
    max_batch: int
    widths: tuple[int, ...]
    row_steps: int = 16

    def width(self, longest: int) -> int | None:
        """The smallest bucket width that holds ``longest`` tokens, or None beyond the ladder."""
        i = bisect.bisect_left(self.widths, longest)
        return self.widths[i] if i < len(self.widths) else None

    def max_rows(self, width: int) -> int:
        return min(self.max_batch, max(1, self.token_budget // width))

    def row_step(self, width: int) -> int:
        return -(-self.max_rows(width) // self.row_steps)

    def shape(self, rows: int, longest: int) -> tuple[int, int] | None:
        """(rows, width) of the bucket for a batch of ``rows`` rows whose longest has ``longest`` tokens."""
        width = self.width(longest)
        if width is None or rows > self.max_rows(width):
            return None
        step = self.row_step(width)
        if rows < step:
            return min(step, small_rows(rows)), width
        return min(self.max_rows(width), -(-rows // step) * step), width
