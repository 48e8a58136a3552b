"""Logging set-up: one line per record, the component in the logger name."""

from __future__ import annotations

import logging
import os


def setup(level: str | None = None) -> None:
    logging.basicConfig(
        level=(level or os.environ.get("HUB_LOG_LEVEL", "INFO")).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # paho and uvicorn are chatty at INFO for every connection.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
