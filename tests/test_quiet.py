"""Known third-party log lines stay out of screener's stderr; everything else still gets through."""

import logging
import os
import subprocess
import sys

import pytest

from conftest import AS_OF, generated_rows, write_archive
from screener.quiet import PYTREE_LOGGER, silence_known_warnings

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_filter_drops_the_enum_registration_warning_only():
    silence_known_warnings()
    silence_known_warnings()
    logger = logging.getLogger(PYTREE_LOGGER)
    collect = Collect()
    logger.addHandler(collect)
    try:
        logger.warning("%s is an Enum subclass and is now natively supported by torch.compile as an opaque value "
                       "type. Calling register_constant() on Enum subclasses is deprecated.", "<enum 'X'>")
        logger.warning("some other pytree warning")
        logging.getLogger("torch.other").warning("is an Enum subclass and is now natively supported by torch.compile")
    finally:
        logger.removeHandler(collect)
    assert collect.messages == ["some other pytree warning"]
    assert len(logger.filters) == 1


def test_scan_stderr_has_screener_lines_and_no_pytree_warning(tmp_path, tiny_model):
    control = subprocess.run(
        [sys.executable, "-c", "import sys; from transformers import AutoModelForSequenceClassification as A; "
                               "A.from_pretrained(sys.argv[1])", str(tiny_model)],
        capture_output=True, text=True, timeout=300, env=ENV, cwd=tmp_path)
    assert control.returncode == 0, control.stderr
    if "_pytree" not in control.stderr:
        pytest.skip("this torch/transformers/torchao combination logs no pytree warning when loading a model")

    db = write_archive(tmp_path / "m.duckdb", generated_rows())
    result = subprocess.run(
        [sys.executable, "-m", "screener.cli", "scan", str(db), "--model", str(tiny_model), "--as-of",
         AS_OF.isoformat(), "--no-progress"],
        capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, result.stderr
    assert "INFO screener.scan: scored 120 messages" in result.stderr
    assert "_pytree" not in result.stderr and "register_constant" not in result.stderr, result.stderr
