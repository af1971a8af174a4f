"""Exceptions of the InfluxDB client.

    InfluxError
    ├── InfluxUnavailable     connection error, timeout, 5xx or 429: retry the same request
    ├── InfluxWriteRejected   4xx on /write: the server refused the body (error text kept)
    └── InfluxQueryError      4xx on /query, or an error inside a statement's result

Callers decide retry versus give-up from the class alone; the server's own message is
kept in ``error`` so it reaches the logs.
"""

from __future__ import annotations


class InfluxError(Exception):
    """Base class for every InfluxDB client error."""


class InfluxUnavailable(InfluxError):
    """The server could not take the request now; the same request may succeed later."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class InfluxWriteRejected(InfluxError):
    """The server refused a write (4xx); ``error`` is its own explanation."""

    def __init__(self, status_code: int, error: str) -> None:
        super().__init__(f"HTTP {status_code}: {error}")
        self.status_code = status_code
        self.error = error


class InfluxQueryError(InfluxError):
    """A query the server refused or that failed inside its result."""

    def __init__(self, status_code: int, error: str) -> None:
        super().__init__(f"HTTP {status_code}: {error}")
        self.status_code = status_code
        self.error = error
