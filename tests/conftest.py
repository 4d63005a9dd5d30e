"""Shared test set-up: the repo root and tests/ on sys.path (tests import run.py and helpers)."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


import logging

import pytest

#: loggers run.py's in-process main() sets levels on (and the warnings it captures)
_CLI_LOGGERS = ("poppyscan", "pipeline", "indices", "classifiers", "outputs", "py.warnings")


@pytest.fixture(autouse=True)
def _cli_logging_reset():
    """An in-process ``run.main`` (in a test or a module fixture) sets the package loggers'
    levels (ERROR with -q), installs its stderr handler on the root logger and routes warnings
    into logging. Each test starts from the pristine state, so its caplog sees its records
    whichever tests or fixtures ran before it."""
    def reset():
        for n in _CLI_LOGGERS:
            logging.getLogger(n).setLevel(logging.NOTSET)
        for n in ("oauthlib", "requests_oauthlib"):      # capped by -v
            logging.getLogger(n).setLevel(logging.NOTSET)
        root = logging.getLogger()
        root.setLevel(logging.WARNING)                    # -v sets DEBUG
        for h in list(root.handlers):
            fmt = getattr(h.formatter, "_fmt", "") or ""
            # run.py's handler (a StreamHandler subclass) on the stderr of a finished test
            if isinstance(h, logging.StreamHandler) and fmt.startswith("poppyscan:"):
                root.removeHandler(h)
        logging.captureWarnings(False)
    reset()
    yield
    reset()
