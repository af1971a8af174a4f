"""French and English: the catalogs are complete, the API answers each error in the caller's
language with the same code, the dashboard's texts come from the catalog, the CLI follows
LANG, and amounts and dates are written the Togolese way."""

from __future__ import annotations

import html
import re
import string
from datetime import UTC, datetime
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from cizo import i18n
from control.api import bodies, errors
from control.cli import words
from control.fleet import messages
from tests.api_support import Keys, TestClient

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "control" / "static"


def _catalog(locale: str) -> Catalog:
    with (i18n.CATALOGS / locale / "LC_MESSAGES" / "cizo.po").open("rb") as fh:
        return read_po(fh, locale=locale)


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def _entries(catalog: Catalog) -> dict[tuple[str | None, str], str]:
    return {(m.context, str(m.id)): str(m.string) for m in catalog if m.id}


# --- the catalogs -------------------------------------------------------------------------


def test_every_msgid_has_a_french_translation_with_the_same_fields() -> None:
    fr = _entries(_catalog("fr"))
    assert fr, "the French catalog is empty"
    empty = [msgid for (_, msgid), text in fr.items() if not text.strip()]
    assert not empty, f"msgids without a French msgstr: {empty}"
    fuzzy = [str(m.id) for m in _catalog("fr") if m.id and m.fuzzy]
    assert not fuzzy, f"fuzzy (unchecked) French translations: {fuzzy}"
    wrong = [msgid for (_, msgid), text in fr.items() if _fields(text) != _fields(msgid)]
    assert not wrong, f"French translations whose {{fields}} differ from the msgid: {wrong}"


def test_english_catalog_has_the_same_messages() -> None:
    assert set(_entries(_catalog("en"))) == set(_entries(_catalog("fr")))


def test_every_message_of_the_code_is_in_the_catalog() -> None:
    known = {msgid for ctx, msgid in _entries(_catalog("fr")) if ctx is None}
    # N_() marks a msgid translated later, say() one the CLI prints now
    used = {msg for d in ("cizo", "control", "cizo_cli")
            for _, _, msg, _, _ in extract_from_dir(ROOT / d, keywords={"N_": None, "say": None},
                                                    method_map=[("**.py", "python")])}
    # the tables of wording, read at run time (one of them is built with an f-string)
    used |= {message for _, message in bodies.REFUSALS.values()}
    used |= set(messages.MESSAGES.values()) | set(messages.TEXTS.values())
    assert used, "no N_() message found: has the marker been renamed?"
    assert not sorted(used - known), f"not in cizo/locale's catalogs: {sorted(used - known)}"


def test_every_web_page_text_is_in_the_catalog() -> None:
    used: set[str] = set()
    for page in [*STATIC.glob("*.html"), *STATIC.glob("*.js")]:
        source = page.read_text()
        used |= {html.unescape(m) for m in
                 re.findall(r'data-i18n(?:-placeholder)?="([^"]*)"', source)}
        # t("...") shows a text now, N_("...") marks one of i18n.js's tables of codes
        used |= set(re.findall(r'\b(?:t|N_)\("((?:[^"\\]|\\.)*)"', source))
    known = set(i18n.texts("fr", "dashboard"))
    assert {"CIZO dashboard", "CIZO kits", "Use key", "Error {status}: {message}"} <= used
    assert not sorted(used - known), f"web page texts not in the catalog: {used - known}"


def _codes(kind: str) -> set[str]:
    """The codes of one of i18n.js's CODES tables (``kind: { code: N_("..."), ... }``)."""
    source = (STATIC / "i18n.js").read_text()
    table = re.search(rf"\b{kind}: \{{(.*?)\}},?\n", source, re.S)
    assert table, kind
    return set(re.findall(r'"?([\w.-]+)"?: N_\(', table.group(1)))


def _written(pattern: str, *dirs: str) -> set[str]:
    """What ``pattern``'s group matches in the Python source of ``dirs``."""
    return {m for d in dirs for f in (ROOT / d).rglob("*.py")
            for m in re.findall(pattern, f.read_text())}


def test_the_pages_word_every_code_the_backend_writes() -> None:
    """A code the pages have no word for would be shown raw to French readers."""
    assert _written(r'Finding\(\s*kit\.id, "(\w+)"', "control") == _codes("alert_kind")
    audits = _written(r'action="([a-z_]+\.[a-z_]+)"', "control")
    audits |= _written(r'"((?:kit|payment)\.[a-z_]+)"', "control")
    audits |= {f"{what}.{status}" for what in ("suspense", "reconcile")
               for status in ("approved", "rejected")} | {"alert.acknowledge", "alert.close"}
    assert audits <= _codes("audit_action"), sorted(audits - _codes("audit_action"))
    assert _written(r'origin="(\w+)"', "control") <= _codes("command_origin")
    assert _written(r'kind="(\w+)"', "control/ledger", "control/support") <= (
        _codes("ledger_kind"))
    assert {"queued", "sent", "applied", "rejected", "expired", "superseded"} == (
        _codes("command_status"))
    habits = (ROOT / "telemetry" / "habits.py").read_text()
    assert set(re.findall(r'return "([a-z-]+)"', habits)) == _codes("load_pattern")
    assert {"ok", "undersized", "oversized", "unknown"} == _codes("sizing")


def test_alert_descriptions_use_the_expected_fade_the_alert_carries() -> None:
    source = (STATIC / "i18n.js").read_text()
    assert "e.expected_fade_per_year" in source
    assert "EXPECTED_FADE_PER_YEAR" not in source  # no copy of the analytics' figure


# --- the pure parts -------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "want"), [
    (None, "fr"), ("", "fr"), ("en", "en"), ("en-US,en;q=0.9", "en"), ("fr-TG", "fr"),
    ("de-DE,en;q=0.5", "en"), ("de", "fr"), ("en;q=0.2,fr;q=0.8", "fr"), ("fr,en", "fr"),
    ("en;q=0", "fr"), ("en;q=abc", "fr"), ("*", "fr"),
])
def test_negotiate_accept_language(header: str | None, want: str) -> None:
    assert i18n.negotiate(header, "fr") == want


def test_negotiate_falls_back_to_the_default_given() -> None:
    assert i18n.negotiate("de", "en") == "en"


@pytest.mark.parametrize(("environ", "want"), [
    ({}, "fr"), ({"LANG": "C.UTF-8"}, "fr"), ({"LANG": "en_US.UTF-8"}, "en"),
    ({"LANG": "fr_FR.UTF-8"}, "fr"), ({"LANG": "de_DE.UTF-8"}, "fr"),
    ({"LC_ALL": "en_GB.UTF-8", "LANG": "fr_FR.UTF-8"}, "en"),
    ({"LC_MESSAGES": "fr_TG", "LANG": "en_US"}, "fr"),
])
def test_terminal_language(environ: dict[str, str], want: str) -> None:
    assert i18n.locale_from_environ(environ, "fr") == want


def test_gettext_fills_fields_and_falls_back_to_english() -> None:
    assert i18n.gettext("fr", "kit {kit_id} not found", kit_id="K-1") == "kit K-1 introuvable"
    assert i18n.gettext("en", "kit {kit_id} not found", kit_id="K-1") == "kit K-1 not found"
    assert i18n.gettext("fr", "a sentence no catalog has") == "a sentence no catalog has"
    assert i18n.gettext("xx", "not found") == "not found"
    assert i18n.gettext("fr", "Unlock", "dashboard") == "Débloquer"


def test_amounts_in_fcfa_with_french_grouping() -> None:
    assert i18n.format_fcfa(12_500) == "12\u202f500 FCFA"
    assert i18n.format_fcfa(1_250_000) == "1\u202f250\u202f000 FCFA"
    assert i18n.format_fcfa(0) == "0 FCFA"


def test_moments_in_lome_time_with_the_zone() -> None:
    moment = datetime(2026, 12, 7, 14, 5, tzinfo=UTC)
    assert i18n.format_when(moment, "fr") == "7 déc. 2026 14:05 GMT"
    assert i18n.format_when(moment.timestamp(), "en") == "7 Dec 2026 14:05 GMT"


# --- the API --------------------------------------------------------------------------------


def test_the_same_error_in_french_by_default_and_english_on_request(
    client: TestClient, keys: Keys,
) -> None:
    auth = {"Authorization": f"Bearer {keys.admin}"}
    fr = client.get("/v1/dashboard/kits/NO-SUCH-KIT", headers=auth)
    en = client.get("/v1/dashboard/kits/NO-SUCH-KIT", headers={**auth, "Accept-Language": "en"})
    assert fr.status_code == en.status_code == 404
    assert fr.json()["code"] == en.json()["code"] == "kit_not_found"
    assert fr.json()["detail"] == en.json()["detail"] == "kit NO-SUCH-KIT not found"
    assert fr.json()["message"] == "kit NO-SUCH-KIT introuvable"
    assert en.json()["message"] == "kit NO-SUCH-KIT not found"
    assert fr.headers["content-language"] == "fr" and en.headers["content-language"] == "en"


@pytest.mark.parametrize(("request_kind", "code"), [
    ("no_key", "api_key_missing"), ("bad_key", "api_key_unknown"),
    ("validation", "request_invalid"), ("no_route", "not_found"),
])
def test_every_kind_of_error_has_a_code_and_both_languages(
    client: TestClient, keys: Keys, request_kind: str, code: str,
) -> None:
    auth = {"Authorization": f"Bearer {keys.admin}"}
    path, extra = {
        "no_key": ("/v1/dashboard/fleet", {}),
        "bad_key": ("/v1/dashboard/fleet", {"Authorization": "Bearer cizo_nope"}),
        "validation": ("/v1/dashboard/kits/K/telemetry?hours=x", auth),
        "no_route": ("/no/such/page", {}),
    }[request_kind]
    fr = client.get(path, headers=extra)
    en = client.get(path, headers={**extra, "Accept-Language": "en-GB,en;q=0.9"})
    assert fr.status_code == en.status_code and fr.status_code >= 400
    assert fr.json()["code"] == en.json()["code"] == code
    assert fr.json()["detail"] == en.json()["detail"]  # what clients read before stays
    assert fr.json()["message"] != en.json()["message"]
    assert fr.headers["content-language"] == "fr"


def test_every_status_code_message_is_translated() -> None:
    for code, msgid in [*errors._BY_STATUS.values(), errors._OTHER]:
        assert i18n.gettext("fr", msgid) != msgid, code


def test_the_dashboard_catalog_endpoint(client: TestClient) -> None:
    fr = client.get("/i18n/dashboard").json()
    assert fr["locale"] == "fr" and fr["messages"]["Unlock"] == "Débloquer"
    en = client.get("/i18n/dashboard", headers={"Accept-Language": "en-US"}).json()
    assert en["locale"] == "en" and en["messages"]["Unlock"] == "Unlock"
    switched = client.get("/i18n/dashboard?lang=en", headers={"Accept-Language": "fr"}).json()
    assert switched["locale"] == "en"
    assert set(fr["messages"]) == set(en["messages"])
    assert client.get("/i18n/secrets").status_code == 422


# --- the CLI --------------------------------------------------------------------------------


def test_cli_language_follows_lang_else_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    monkeypatch.delenv("CIZO_DEFAULT_LOCALE", raising=False)
    assert words.cli_locale() == "fr"
    totals = {"rows": 3, "created": 2, "unchanged": 0, "rejected": 1}
    assert messages.text("import_totals", words.cli_locale(), **totals) == (
        "3 lignes : 2 créées, 0 déjà présentes, 1 refusées")
    assert words.say("key {key_id} revoked", key_id=7) == "clé 7 révoquée"
    monkeypatch.setenv("LANG", "en_US.UTF-8")
    assert messages.text("import_totals", words.cli_locale(), **totals) == (
        "3 rows: 2 created, 0 already there, 1 refused")
    assert words.say("key {key_id} revoked", key_id=7) == "key 7 revoked"
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("CIZO_DEFAULT_LOCALE", "en")
    assert words.cli_locale() == "en"


def test_a_cli_command_speaks_french_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cizo_cli.main import main

    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    monkeypatch.setenv("CIZO_DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    assert main(["migrate"]) == 0
    assert main(["keys", "revoke", "999"]) == 1
    assert "cizo keys revoke : pas de clé 999" in capsys.readouterr().err
