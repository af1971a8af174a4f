"""The wording of the kit list, the kit import and the exports, in one place.

Every refusal of these features is named here once, by a machine-readable ``code`` the API
answers beside the message (``{"detail": message, "code": code}``) and an import reports
per row (``MESSAGES``); the lines ``cizo kits ...`` prints are here too (``TEXTS``). The
English wording lives only here, so a translation catalog can take it over by key.
"""

from __future__ import annotations

from typing import Any

MESSAGES: dict[str, str] = {
    "kit_id_invalid": "kit id {kit_id!r} is not 1-64 characters of A-Z a-z 0-9 - _",
    "kit_exists": "kit {kit_id} already exists",
    "kit_duplicate_in_file": "kit {kit_id} appears more than once in the file (row {first})",
    "desco_forbidden": "this key may only provision kits for its own DESCO",
    "desco_unknown": "unknown DESCO {desco_id}",
    "region_unknown": "unknown region {region!r} (one of {regions})",
    "phone_invalid": "{reason}",
    "plan_invalid": "{reason}",
    "number_invalid": "{column} must be a whole number, not {value!r}",
    "flag_invalid": "{column} must be true or false, not {value!r}",
    "column_missing": "the file has no column {column} (needed: {needed})",
    "file_not_csv": "the file is not UTF-8 CSV: {reason}",
    "import_unknown": "no kit import {import_id}",
    "file_too_large": "at most {limit} rows per request; send the file in parts",
    "cursor_invalid": "the cursor is not one this list gave out; start again without it",
    "search_too_long": "search text is at most {limit} characters",
    "columns_unknown": "unknown columns {columns} (allowed: {allowed})",
}

TEXTS: dict[str, str] = {
    "no_file": "cizo kits import: no file {path}",
    "credentials_exist": "cizo kits import: {path} exists; credentials are written once to "
                         "a new file (give --credentials-out)",
    "http_error": "cizo {command}: HTTP {status} [{code}]: {detail}",
    "import_totals": "{rows} rows: {created} created, {unchanged} already there, "
                     "{rejected} refused",
    "credentials_file": "credentials of the new kits: {path}",
    "errors_file": "refused rows: {path}",
    "no_api_key": "cizo {command}: give --api-key or set CIZO_SUPPORT_API_KEY",
}


def text(key: str, **params: Any) -> str:
    """A line for the terminal, in the one place of the wording."""
    return TEXTS[key].format(**params)


class Refused(ValueError):
    """A refusal with its stable ``code``, its HTTP ``status`` and the message's values."""

    def __init__(self, code: str, status: int = 422, **params: Any) -> None:
        self.code = code
        self.status = status
        self.params = params
        super().__init__(MESSAGES[code].format(**params))

    def body(self) -> dict[str, Any]:
        """The API's answer: the message and its code."""
        return {"detail": str(self), "code": self.code}
