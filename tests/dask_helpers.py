"""Test helpers for dask laziness checks."""
from __future__ import annotations

from dask.callbacks import Callback


class CountComputes(Callback):
    """Counts dask graph executions (any .compute / .values) while active."""

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0

    def _start(self, dsk) -> None:
        self.runs += 1
