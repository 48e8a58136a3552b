"""Translations of the pages: gettext catalogs (Babel) with Jinja2's i18n extension.

Templates are written with English message ids (``{{ _("Active alarms") }}``); the
``zh_CN`` catalog (the default: operators read Chinese) and the ``en`` catalog live in
``frontend/translations/<lang>/LC_MESSAGES/messages.po`` and are compiled in memory at
start, so no build step is needed. ``pybabel extract -F frontend/babel.cfg -o
frontend/translations/messages.pot .`` and ``pybabel update -i ... -d frontend/translations``
refresh them. A page's language comes from ``?lang=``, then the ``lang`` cookie, then
zh_CN.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations
from jinja2 import Environment, pass_context
from jinja2.runtime import Context

TRANSLATIONS_DIR = Path(__file__).resolve().parent.parent / "frontend" / "translations"
LANGUAGES = {"zh_CN": "中文", "en": "English"}
DEFAULT_LANGUAGE = "zh_CN"
HTML_LANG = {"zh_CN": "zh-CN", "en": "en"}


def load_catalogs(directory: Path = TRANSLATIONS_DIR) -> dict[str, Translations]:
    out: dict[str, Translations] = {}
    for lang in LANGUAGES:
        # messages.po, then the parts' own catalogs beside it (field.po: the field app),
        # merged into one: a part's strings can be added without touching the others'.
        pos = sorted((directory / lang / "LC_MESSAGES").glob("*.po"),
                     key=lambda f: (f.name != "messages.po", f.name))
        for po in pos:
            with po.open("rb") as f:
                catalog = read_po(f, locale=lang)
            buf = io.BytesIO()
            write_mo(buf, catalog)
            buf.seek(0)
            if lang in out:
                out[lang].merge(Translations(fp=buf))
            else:
                out[lang] = Translations(fp=buf)
    return out


CATALOGS = load_catalogs()


def pick_language(query: str | None, cookie: str | None) -> str:
    for candidate in (query, cookie):
        if candidate in LANGUAGES:
            return candidate
    return DEFAULT_LANGUAGE


def gettext_for(lang: str, message: str) -> str:
    return str(CATALOGS[lang].ugettext(message))


@pass_context
def _gettext(ctx: Context, message: str, **variables: Any) -> str:
    rv = gettext_for(ctx.get("lang", DEFAULT_LANGUAGE), message)
    return rv % variables if variables else rv


@pass_context
def _ngettext(ctx: Context, singular: str, plural: str, n: int, **variables: Any) -> str:
    rv = str(CATALOGS[ctx.get("lang", DEFAULT_LANGUAGE)].ungettext(singular, plural, n))
    variables.setdefault("num", n)
    return rv % variables


def install(env: Environment) -> None:
    """Give templates ``_``/``gettext``/``ngettext`` that follow the page's ``lang``."""
    env.add_extension("jinja2.ext.i18n")
    env.install_gettext_callables(_gettext, _ngettext, newstyle=True)  # type: ignore[attr-defined]
