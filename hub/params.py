"""Bounds on the numbers requests carry, shared by the routes.

A number the database cannot hold (an id past bigint, a time past year 9999) is a bad
request, refused by validation with ``request.invalid`` before it reaches a query; found by
fuzzing the API (tests/test_api_fuzz.py), where such values used to surface as 500s.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

BIGINT_MAX = 2**63 - 1
# 2100-01-01T00:00:00Z: far enough for any case or report, and far from the end of
# Python's datetime (year 9999), which arithmetic on a time near it overflows.
UNIX_MAX = 4_102_444_800.0

RowId = Annotated[int, Path(ge=1, le=BIGINT_MAX)]
Seq = Annotated[int, Query(ge=0, le=BIGINT_MAX)]
Since = Annotated[float, Query(ge=0, le=UNIX_MAX, description="UNIX seconds")]
Until = Annotated[float | None, Query(ge=0, le=UNIX_MAX,
                                      description="UNIX seconds; default now")]
