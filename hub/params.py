"""Bounds on the numbers requests carry, shared by the routes.

A number the database cannot hold (an id past bigint, a time past year 9999) is a bad
request, refused by validation with ``request.invalid`` before it reaches a query; found by
fuzzing the API (tests/test_api_fuzz.py), where such values used to surface as 500s.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

BIGINT_MAX = 2**63 - 1
# 9999-12-31T23:59:59Z: the last second Python's datetime (and so the hub) can express.
UNIX_MAX = 253_402_300_799.0

RowId = Annotated[int, Path(ge=1, le=BIGINT_MAX)]
Seq = Annotated[int, Query(ge=0, le=BIGINT_MAX)]
Since = Annotated[float, Query(ge=0, le=UNIX_MAX, description="UNIX seconds")]
Until = Annotated[float | None, Query(ge=0, le=UNIX_MAX,
                                      description="UNIX seconds; default now")]
