"""Serving settings: arguments of the app factory first, then environment variables, then defaults.

The same image runs on a laptop, in CI and on Heroku, where the only way in is the
environment: ``CCFRAUD_MODEL``, ``CCFRAUD_MAX_ROWS``, ``CCFRAUD_MAX_BODY_BYTES``, and for the
server's worker ``CCFRAUD_READ_TIMEOUT``.
A malformed value stops the process at start-up: a limit silently replaced by a
default is worse than a crash that says which variable is wrong.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

MODEL_ENV = "CCFRAUD_MODEL"
MAX_ROWS_ENV = "CCFRAUD_MAX_ROWS"
MAX_BODY_ENV = "CCFRAUD_MAX_BODY_BYTES"
READ_TIMEOUT_ENV = "CCFRAUD_READ_TIMEOUT"

DEFAULT_MODEL = "models"
#: Rows per /predict request.
DEFAULT_MAX_ROWS = 10_000
#: Bytes per request body: a 10,000-row batch at full float precision is about 5.7 MB as
#: CSV and 8 MB as JSON instances (every value spelled out with its field name).
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
#: Seconds a client has to send a whole request, headers and body (see :mod:`ccfraud.serving.worker`):
#: long enough for the largest body (16 MiB) at about 3.4 MB/s, short enough that a client
#: trickling bytes gives its connection up within seconds.
DEFAULT_READ_TIMEOUT = 5.0


@dataclass(frozen=True)
class ServingConfig:
    """Where the model is and how much one request may ask for."""

    model_location: str
    max_rows: int
    max_body_bytes: int


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count): the threads a big batch gets."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _positive_int(name: str, value: int | str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive integer, found {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be a positive integer, found {value!r}")
    return number


def resolve(model_location: str | None = None, *, max_rows: int | None = None,
            max_body_bytes: int | None = None) -> ServingConfig:
    """Settings from the arguments given, else the environment, else the defaults."""
    location = model_location or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    rows = max_rows if max_rows is not None else os.environ.get(MAX_ROWS_ENV, DEFAULT_MAX_ROWS)
    body = max_body_bytes if max_body_bytes is not None else os.environ.get(MAX_BODY_ENV, DEFAULT_MAX_BODY_BYTES)
    return ServingConfig(
        model_location=str(location),
        max_rows=_positive_int("max_rows" if max_rows is not None else MAX_ROWS_ENV, rows),
        max_body_bytes=_positive_int("max_body_bytes" if max_body_bytes is not None else MAX_BODY_ENV, body),
    )


def read_timeout() -> float:
    """Seconds a request may take to arrive, from ``CCFRAUD_READ_TIMEOUT`` (default 5): a positive number."""
    value = os.environ.get(READ_TIMEOUT_ENV)
    if value is None:
        return DEFAULT_READ_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{READ_TIMEOUT_ENV} must be a positive number of seconds, found {value!r}")
    return seconds
