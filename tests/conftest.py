"""Shared test set-up: the repo root and tests/ on sys.path (tests import run.py and helpers)."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


import logging  # noqa: E402

import pytest  # noqa: E402

#: loggers run.py's in-process main() sets levels on (and the warnings it captures)
_CLI_LOGGERS = ("poppyscan", "pipeline", "indices", "classifiers", "outputs", "py.warnings")


@pytest.fixture(autouse=True)
def _cli_logging_restored():
    """An in-process ``run.main`` sets the package loggers' levels (ERROR with -q) and routes
    warnings into logging; restore both after each test, so a later test's caplog sees its
    records whichever tests ran before it."""
    saved = {n: logging.getLogger(n).level for n in _CLI_LOGGERS}
    root_handlers = list(logging.getLogger().handlers)
    yield
    for n, level in saved.items():
        logging.getLogger(n).setLevel(level)
    logging.getLogger().handlers[:] = root_handlers
    logging.captureWarnings(False)
