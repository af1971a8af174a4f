"""French and English for every message a person reads: API errors, the dashboard, the CLI.

The wording is English in the code (the gettext ``msgid``) and translated in the catalogs
``cizo/locale/<locale>/LC_MESSAGES/cizo.po``, read at run time with Babel's ``read_po``
so a fresh clone needs no compile step. A message the catalog lacks falls back to its
English ``msgid``. ``msgctxt`` groups a page's texts (``dashboard``) so the browser is
sent only those. docs/architecture.md ("Languages") says how to add a string.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_datetime
from babel.messages.pofile import read_po
from babel.numbers import format_decimal

LOCALES: tuple[str, ...] = ("fr", "en")
CATALOGS = Path(__file__).resolve().parent / "locale"
LOME = ZoneInfo("Africa/Lome")  # UTC+0 all year, shown as "GMT"

# the environment variables naming the terminal's language, in POSIX precedence
_LANG_VARIABLES = ("LC_ALL", "LC_MESSAGES", "LANG")


def N_(msgid: str) -> str:
    """Marks a ``msgid`` translated later, where the caller's language is known."""
    return msgid


def negotiate(accept_language: str | None, default: str) -> str:
    """The locale of ``LOCALES`` an ``Accept-Language`` header prefers, else ``default``.

    Only the primary subtag counts (``fr-TG`` is ``fr``); among equal weights the first
    listed wins, as RFC 9110 leaves the order to the server.
    """
    best, best_q = default, 0.0
    for part in (accept_language or "").split(","):
        tag, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        lang = tag.lower().replace("_", "-").split("-")[0]
        if lang in LOCALES and q > best_q:
            best, best_q = lang, q
    return best


def locale_from_environ(environ: Mapping[str, str], default: str) -> str:
    """The terminal's language (``LC_ALL``, ``LC_MESSAGES``, ``LANG``) if it is one of
    ``LOCALES``; ``C``, ``POSIX`` or an unsupported language give ``default``."""
    for name in _LANG_VARIABLES:
        value = environ.get(name, "")
        if value:
            lang = value.split(".")[0].split("_")[0].split("-")[0].lower()
            return lang if lang in LOCALES else default
    return default


@functools.cache
def _catalog(locale: str) -> dict[tuple[str | None, str], str]:
    """(context, msgid) -> translation ("" when untranslated) of one locale's catalog."""
    with (CATALOGS / locale / "LC_MESSAGES" / "cizo.po").open("rb") as fh:
        catalog = read_po(fh, locale=locale, domain="cizo")
    return {(m.context, m.id): m.string if isinstance(m.string, str) and not m.fuzzy else ""
            for m in catalog if m.id and isinstance(m.id, str)}


def gettext(locale: str, msgid: str, context: str | None = None, **params: Any) -> str:
    """``msgid`` in ``locale`` with ``params`` filled in (``str.format`` fields)."""
    text = (_catalog(locale).get((context, msgid)) if locale in LOCALES else None) or msgid
    return text.format(**params) if params else text


def texts(locale: str, context: str) -> dict[str, str]:
    """Every message of one context (a page), msgid -> its text in ``locale``."""
    ids = sorted(msgid for ctx, msgid in _catalog(LOCALES[0]) if ctx == context)
    return {msgid: gettext(locale, msgid, context) for msgid in ids}


def format_fcfa(amount: int | float) -> str:
    """An amount in FCFA with French digit grouping (``12 500 FCFA``), as written in Togo
    whatever the reader's language."""
    return f"{format_decimal(amount, locale='fr_FR')} FCFA"


def format_when(moment: datetime | float, locale: str) -> str:
    """A moment in Lomé's time with its zone shown (``7 déc. 2026 14:05 GMT``)."""
    dt = moment if isinstance(moment, datetime) else datetime.fromtimestamp(moment, UTC)
    return format_datetime(dt, "d MMM y HH:mm z", tzinfo=LOME, locale=locale)
