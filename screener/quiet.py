"""Drops known third-party log lines that say nothing about a screener run, so cron logs carry screener's own.

torchao, which transformers imports whenever it is installed, registers its enums with torch's pytree module at
import time, and this torch version logs a deprecation warning for each one (``<enum 'KernelPreference'> is an
Enum subclass ... register_constant() ... deprecated``) in every process that loads a model. The filter sits on
that logger alone and matches that message alone; installing it does not import torch.
"""

from __future__ import annotations

import logging

PYTREE_LOGGER = "torch.utils._pytree"
ENUM_REGISTRATION = "is an Enum subclass and is now natively supported by torch.compile"


class EnumRegistrationFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return ENUM_REGISTRATION not in str(record.msg)


def silence_known_warnings() -> None:
    """Install the filters; safe to call more than once."""
    logger = logging.getLogger(PYTREE_LOGGER)
    if not any(isinstance(f, EnumRegistrationFilter) for f in logger.filters):
        logger.addFilter(EnumRegistrationFilter())
