"""The wording of the kit list, the kit import and the exports, in one place.

Every refusal of these features is named here once, by a machine-readable ``code`` the API
answers beside the message (control.api.errors) and an import reports per row
(``MESSAGES``); the lines ``cizo kits ...`` prints are here too (``TEXTS``). The English
wording is each message's msgid in cizo/locale's catalogs, which translate it.
"""

from __future__ import annotations

from typing import Any

from cizo.i18n import N_, gettext

MESSAGES: dict[str, str] = {
    "kit_id_invalid": N_("kit id {kit_id!r} is not 1-64 characters of A-Z a-z 0-9 - _"),
    "kit_exists": N_("kit {kit_id} already exists"),
    "kit_duplicate_in_file": N_("kit {kit_id} appears more than once in the file (row {first})"),
    "desco_forbidden": N_("this key may only provision kits for its own DESCO"),
    "desco_unknown": N_("unknown DESCO {desco_id}"),
    "region_unknown": N_("unknown region {region!r} (one of {regions})"),
    "kind_unknown": N_("unknown kit kind {kind!r} (one of {kinds})"),
    "phone_invalid": N_("{reason}"),
    "plan_invalid": N_("{reason}"),
    "number_invalid": N_("{column} must be a whole number, not {value!r}"),
    "flag_invalid": N_("{column} must be true or false, not {value!r}"),
    "column_missing": N_("the file has no column {column} (needed: {needed})"),
    "file_not_csv": N_("the file is not UTF-8 CSV: {reason}"),
    "import_unknown": N_("no kit import {import_id}"),
    "file_too_large": N_("at most {limit} rows per request; send the file in parts"),
    "cursor_invalid": N_("the cursor is not one this list gave out; start again without it"),
    "search_too_long": N_("search text is at most {limit} characters"),
    "columns_unknown": N_("unknown columns {columns} (allowed: {allowed})"),
}

TEXTS: dict[str, str] = {
    "no_file": N_("cizo kits import: no file {path}"),
    "credentials_exist": N_("cizo kits import: {path} exists; credentials are written once to "
                            "a new file (give --credentials-out)"),
    "http_error": N_("cizo {command}: HTTP {status} [{code}]: {detail}"),
    "import_totals": N_("{rows} rows: {created} created, {unchanged} already there, "
                        "{rejected} refused"),
    "credentials_file": N_("credentials of the new kits: {path}"),
    "errors_file": N_("refused rows: {path}"),
    "no_api_key": N_("cizo {command}: give --api-key or set CIZO_SUPPORT_API_KEY"),
}


def text(key: str, locale: str, **params: Any) -> str:
    """A line for the terminal in ``locale``, from the one place of the wording."""
    return gettext(locale, TEXTS[key], **params)


class Refused(ValueError):
    """A refusal with its stable ``code``, its HTTP ``status`` and the message's values."""

    def __init__(self, code: str, status: int = 422, **params: Any) -> None:
        self.code = code
        self.status = status
        self.params = params
        super().__init__(MESSAGES[code].format(**params))

