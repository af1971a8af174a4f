"""What the browser tests share: Debian's Chromium, pages opened in French with a stored key,
and the screenshots of the French user guide (docs/guide-fr.md), which the tests take anew
on every run into var/guide-fr/; ``scripts/guide-pictures`` runs them and copies the
pictures into docs/guide-fr/, so a test run never changes a file git tracks. No tests live
in this module.
"""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Browser, Page, ViewportSize

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
SHOTS = ROOT / "var" / "screenshots"  # the tests' own pictures, not kept in git
GUIDE = ROOT / "docs" / "guide-fr.md"
GUIDE_IMAGES = ROOT / "docs" / "guide-fr"  # the guide's pictures, as last copied
TAKEN = ROOT / "var" / "guide-fr"  # where the browser tests take them, on every run
# a laptop's screen; the guide's pictures are this wide, the whole page cut at MAX_HEIGHT
# (a kit page's tables run long, and each picture stays under 250 KB)
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
MAX_HEIGHT = 1400

# Every page of control/api/app.py's PAGES, with the pictures of it the guide shows.
GUIDE_SHOTS: dict[str, tuple[str, ...]] = {
    "/": ("liste-des-kits.png",),
    "/dashboard": ("tableau-de-bord.png", "fiche-kit.png"),
    "/finance": ("finance.png",),
    "/regulator": ("vue-nationale.png",),
}


def french_page(browser: Browser, url: str, key: str) -> Page:
    """``url`` in a new browser context that asks for French (Accept-Language, as a browser
    in Lomé does), with ``key`` already stored as the pages keep it."""
    ctx = browser.new_context(viewport=VIEWPORT, locale="fr-TG")
    ctx.add_init_script(f"localStorage.setItem('cizo_api_key', {key!r});")
    page = ctx.new_page()
    page.goto(url)
    return page


def guide_shot(page: Page, name: str) -> Path:
    """``page`` as var/guide-fr/``name`` (docs/guide-fr/ once copied): a French page at
    VIEWPORT, from its top down to its end or MAX_HEIGHT."""
    assert name in {n for names in GUIDE_SHOTS.values() for n in names}, name
    assert page.evaluate("document.documentElement.lang") == "fr"
    assert page.viewport_size == VIEWPORT
    TAKEN.mkdir(parents=True, exist_ok=True)
    path = TAKEN / name
    height = page.evaluate("document.documentElement.scrollHeight")
    page.screenshot(path=str(path), full_page=True, animations="disabled",
                    clip={"x": 0, "y": 0, "width": VIEWPORT["width"],
                          "height": min(height, MAX_HEIGHT)})
    return path
