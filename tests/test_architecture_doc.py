"""docs/architecture.md is written from the code: every file it names exists, and every
module of the product appears in its package map, so the page cannot silently go stale."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("cizo", "cizo_cli", "telemetry", "broker_bridge", "control", "firmware_sim",
            "payment_sim")
NOT_LISTED = {"__init__.py", "__main__.py"}


def named_paths() -> set[str]:
    """Every `path/like/this.py` or `path/` in backticks that starts at a package or tree."""
    found = set()
    roots = (*PACKAGES, "tests", "bench", "deploy", "scripts", "docs")
    for raw in re.findall(r"`([A-Za-z0-9_./-]+)`", DOC.read_text(encoding="utf-8")):
        if raw.split("/")[0] in roots and ("/" in raw):
            found.add(raw)
    return found


def product_modules() -> set[str]:
    modules = set()
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if path.name in NOT_LISTED or "/migrations/" in rel:
                continue
            modules.add(rel)
    return modules


def test_every_path_the_page_names_exists() -> None:
    missing = sorted(p for p in named_paths() if not (ROOT / p).exists())
    assert missing == [], f"docs/architecture.md names files that do not exist: {missing}"


def test_every_product_module_is_on_the_map() -> None:
    absent = sorted(product_modules() - named_paths())
    assert absent == [], f"modules missing from docs/architecture.md's package map: {absent}"


def test_the_page_names_enough_to_be_read() -> None:
    """A guard on the test itself: the parsing above found the map."""
    assert len(named_paths()) > 80
