"""The French user guide (docs/guide-fr.md) shows every web page the app serves: each page
of control/api/app.py's PAGES has its pictures in the guide, each picture the guide shows
exists, is taken by a browser test (tests/browser_support.py guide_shot) and stays small,
and the README and the pages' own docs point to the guide."""

from __future__ import annotations

import re
import struct

from control.api.app import PAGES
from tests.browser_support import GUIDE, GUIDE_IMAGES, GUIDE_SHOTS, ROOT, VIEWPORT

IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
MAX_BYTES = 250_000
PNG = b"\x89PNG\r\n\x1a\n"


def shown() -> list[str]:
    """Every picture the guide shows, as written in it (relative to docs/)."""
    return IMAGE.findall(GUIDE.read_text(encoding="utf-8"))


def test_every_page_of_the_app_has_its_pictures_in_the_guide() -> None:
    assert set(GUIDE_SHOTS) == set(PAGES), "a page without pictures, or pictures of no page"
    missing = [f"{page} {name}" for page, names in GUIDE_SHOTS.items() for name in names
               if f"guide-fr/{name}" not in shown()]
    assert missing == [], f"pictures docs/guide-fr.md does not show: {missing}"


def test_every_picture_the_guide_shows_exists_as_a_small_png_of_the_viewport_width() -> None:
    assert len(shown()) >= len(PAGES)
    for ref in shown():
        path = GUIDE.parent / ref
        assert path.is_file(), f"docs/guide-fr.md shows {ref}, which does not exist"
        head = path.read_bytes()[:24]
        assert head[:8] == PNG, ref
        assert struct.unpack(">I", head[16:20])[0] == VIEWPORT["width"], ref
        assert path.stat().st_size < MAX_BYTES, f"{ref}: {path.stat().st_size} bytes"


def test_every_picture_is_one_a_browser_test_takes_and_none_is_left_over() -> None:
    names = {name for names in GUIDE_SHOTS.values() for name in names}
    tests = "".join(p.read_text(encoding="utf-8")
                    for p in (ROOT / "tests").glob("test_browser_*.py"))
    untaken = sorted(n for n in names if f'guide_shot(page, "{n}")' not in tests)
    assert untaken == [], f"pictures no browser test takes: {untaken}"
    assert {p.name for p in GUIDE_IMAGES.glob("*.png")} == names


def test_the_readme_and_the_pages_docs_point_to_the_guide() -> None:
    assert "docs/guide-fr.md" in (ROOT / "README.md").read_text(encoding="utf-8")
    for doc in ("kits.md", "analytics.md", "payments.md"):  # where the pages are described
        assert "](guide-fr.md)" in (ROOT / "docs" / doc).read_text(encoding="utf-8"), doc
