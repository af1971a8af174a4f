"""The staff CLI's lines in the terminal's language, from cizo/locale's catalogs."""

from __future__ import annotations

import os
from typing import Any

from cizo.i18n import gettext, locale_from_environ
from cizo.settings import load_settings


def cli_locale() -> str:
    """The terminal's language (``LC_ALL``, ``LC_MESSAGES``, ``LANG``: fr or en), else the
    settings' ``default_locale``."""
    return locale_from_environ(os.environ, load_settings().default_locale)


def say(msgid: str, **params: Any) -> str:
    """``msgid`` (English, in the catalogs) in the CLI's language, its fields filled in."""
    return gettext(cli_locale(), msgid, **params)
