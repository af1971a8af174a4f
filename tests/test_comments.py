"""Comments say why, never history: no "issue 5" or "session 2" in a comment of product code
or tests (git keeps the history)."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cizo", "cizo_cli", "control", "broker_bridge", "telemetry", "firmware_sim",
            "payment_sim", "bench", "tests")
HISTORY = re.compile(r"\b(issue|session|round|stop)\s+#?\d+", re.IGNORECASE)


def history_comments(source: str) -> list[tuple[int, str]]:
    """(line, comment) of every comment that tells history."""
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and HISTORY.search(tok.string):
            found.append((tok.start[0], tok.string))
    return found


def test_the_rule_sees_a_history_comment_and_nothing_else() -> None:
    assert history_comments("x = 1  # fixed in issue 5\n") == [(1, "# fixed in issue 5")]
    assert history_comments("# Session 2: faster\ny = 2\n") == [(1, "# Session 2: faster")]
    assert history_comments('s = "issue 5"  # the kit sends 2 readings\n') == []


def test_no_comment_tells_history() -> None:
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, text in history_comments(path.read_text(encoding="utf-8")):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {text}")
    assert offenders == []
