"""The one mapping of error codes to HTTP responses.

Every refusal is JSON ``{"error": {"code": ..., "message": ...}}`` with a stable code.
"""

from __future__ import annotations

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import Conflict, Forbidden, HubError, InvalidInput, NotFound

STATUS_BY_TYPE: list[tuple[type[HubError], int]] = [
    (NotFound, 404),
    (Conflict, 409),
    (Forbidden, 403),
    (InvalidInput, 422),
]

# Codes whose class does not say it all.
STATUS_BY_CODE: dict[str, int] = {
    "case.illegal_transition": 409,
    "case.reason_required": 422,
    "case.verifier_is_handler": 409,
    "case.approver_is_requester": 409,
    "case.unknown_action": 422,
    "rule.invalid": 422,
}


def status_for(err: HubError) -> int:
    if err.code in STATUS_BY_CODE:
        return STATUS_BY_CODE[err.code]
    for cls, status in STATUS_BY_TYPE:
        if isinstance(err, cls):
            return status
    return 400


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def install(app: FastAPI) -> None:
    @app.exception_handler(HubError)
    async def _hub_error(request: Request, exc: HubError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=status_for(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse(
            error_body("request.invalid", f"{where}: {first.get('msg', 'invalid request')}"),
            status_code=422)

    # Values the database cannot take, in requests that validation let through: a NUL in a
    # text, a lone surrogate (not encodable as UTF-8), a number out of a column's range.
    # The request is at fault, not the hub (found by tests/test_api_fuzz.py).
    @app.exception_handler(asyncpg.DataError)
    async def _data(request: Request, exc: asyncpg.DataError) -> JSONResponse:
        return JSONResponse(error_body("request.invalid_value", str(exc)[:200]),
                            status_code=422)

    @app.exception_handler(UnicodeEncodeError)
    async def _encoding(request: Request, exc: UnicodeEncodeError) -> JSONResponse:
        return JSONResponse(error_body("request.invalid_text",
                                       "text must be valid Unicode (no lone surrogates)"),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed",
                413: "request.too_large"}.get(exc.status_code, "http.error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code)
