"""One error hierarchy for poppyscan.

Every user-facing failure is a :class:`PoppyscanError`; ``run.py`` prints it as one line and
exits 2. Subclasses also inherit the matching built-in so library callers can catch either.
"""
from __future__ import annotations

from collections.abc import Sequence


class PoppyscanError(Exception):
    """Root of all poppyscan errors that are the user's to fix (exit code 2)."""


class InputError(PoppyscanError, ValueError):
    """An input file is missing, unreadable, corrupt or not what the contract says."""


class ConfigError(PoppyscanError, ValueError):
    """A configuration file has a wrong key or value."""


class BandError(InputError, KeyError):
    """A band that a stage needs is missing from the scene."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0]) if self.args else ""


class SensorNeeded(InputError):
    """A file's bands cannot be named without knowing its sensor. The message says how to
    name them in the file (what every command can use); ``sensors`` are the sensor names that
    ``inspect --sensor`` would take instead."""

    def __init__(self, message: str, sensors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.sensors = tuple(sensors)


class CRSError(InputError):
    """A CRS is missing, unknown or incompatible."""


class ModelError(PoppyscanError, ValueError):
    """A model artifact is missing, untrusted or does not fit the inputs."""


class CredentialsError(PoppyscanError, PermissionError):
    """Sentinel Hub / CDSE credentials are missing or rejected."""


class StoppedMidRun(PoppyscanError, RuntimeError):
    """A run stopped by its surroundings after work had been done (a worker killed for
    memory): ``run.py`` keeps the output folder's finished tiles for the rerun, as after
    Ctrl-C."""


class OutputBusy(InputError):
    """Another detect or fetch is writing into the same output folder: its run state is not
    this run's to clean up."""


class NotImplementedYet(PoppyscanError, NotImplementedError):
    """A command whose issue has not landed yet."""
