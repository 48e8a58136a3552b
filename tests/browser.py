"""Headless Chromium for the browser tests: where it is, how it is started, and a logged-in
session to reuse (the ``browser`` and ``auth_state`` fixtures in tests/conftest.py)."""

from __future__ import annotations

import secrets
import uuid
from typing import TYPE_CHECKING, Any

from playwright.sync_api import Browser

if TYPE_CHECKING:
    from tests.conftest import HubProcess

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps dialling out, which this closed
# network refuses, many times a second.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def login_state(browser: Browser, hub: HubProcess, role: str = "admin") -> Any:
    """Log in once through the real login page (a new user made with the CLI) and return
    the browser storage state holding the session cookie, for new contexts to reuse."""
    name, password = f"browser-{uuid.uuid4().hex[:6]}", secrets.token_urlsafe(18)
    from tests.conftest import cli_user

    cli_user(hub.db_url, name, role, password)
    ctx = browser.new_context(locale="zh-CN")
    try:
        pg = ctx.new_page()
        pg.goto(hub.url + "/cases/1")
        assert "/login?next=" in pg.url, pg.url  # a page without a session goes to log in
        assert pg.get_attribute('meta[name="csrf-token"]', "content") == ""
        pg.fill("#username", name)
        pg.fill("#password", password)
        pg.click("#login-submit")
        pg.wait_for_url(hub.url + "/cases/1")  # and comes back after it
        cookie = next(c for c in ctx.cookies() if c["name"] == "gridhub_session")
        assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
        assert pg.get_attribute('meta[name="csrf-token"]', "content")
        assert pg.inner_text("#user-name") == name
        return ctx.storage_state()
    finally:
        ctx.close()
