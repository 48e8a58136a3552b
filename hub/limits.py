"""The request-body size limit for every HTTP input.

A request that declares a ``Content-Length`` above ``Settings.max_body_bytes`` is refused
at once with 413 ``request.too_large``, before any handler or the authentication runs. A
body sent without a length (chunked) is counted as it is read: the read that crosses the
limit raises ``BodyTooLarge`` (an HTTP 413), which ``hub/errors.py`` renders the same way.
Websocket messages are bounded by uvicorn's ``ws_max_size`` (``ws_max_message_bytes``).
"""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.errors import error_body

TOO_LARGE = "request.too_large"


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class BodySizeLimit:
    """Pure ASGI middleware; ``limit`` in bytes. ``wider``: exact paths with a limit of
    their own (the field app's photo upload takes a camera's photo)."""

    def __init__(self, app: ASGIApp, limit: int, wider: dict[str, int] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.wider = wider or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.wider.get(scope.get("path", ""), self.limit)
        length = dict(scope.get("headers", ())).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = limit + 1
            if declared > limit:
                await JSONResponse(
                    error_body(TOO_LARGE, f"request body larger than {limit} bytes"),
                    status_code=413, headers={"Connection": "close"})(scope, receive, send)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return msg

        await self.app(scope, counted, send)
