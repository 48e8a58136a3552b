"""Error types with stable string codes.

Codes are part of the API: clients and tests match on them, so they never change
meaning. ``hub/errors.py`` is the one place that maps them to HTTP and websocket errors.
"""

from __future__ import annotations


class HubError(Exception):
    """Base of every expected error. ``code`` is stable; ``message`` is for people."""

    code = "hub.error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message


class NotFound(HubError):
    code = "not_found"


class Conflict(HubError):
    code = "conflict"


class InvalidInput(HubError):
    code = "invalid_input"


class Forbidden(HubError):
    code = "forbidden"


class ConfigError(HubError):
    code = "config.error"


class MissingTimescaleDB(ConfigError):
    code = "config.timescaledb_missing"
