#!/usr/bin/env python3
"""Container healthchecks for the cizo image, standard library only.

Installed in the image as ``cizo-healthcheck`` (Dockerfile); docker-compose.yml uses:

    cizo-healthcheck http URL
        healthy when GET URL answers 2xx within 3 s (the control API's /readyz).
    cizo-healthcheck tcp-established PORT
        healthy when this container holds an ESTABLISHED TCP connection to remote PORT
        (the bridge's MQTT connection to the broker on 1883): read from /proc/net/tcp{,6}.
    cizo-healthcheck fresh FILE MAX_AGE_S
        healthy when FILE was modified less than MAX_AGE_S seconds ago (the rollup
        service touches its file after each successful run).

Exit status 0 = healthy, 1 = unhealthy, 2 = usage error.
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

TCP_ESTABLISHED = "01"


def http_ok(url: str, timeout_s: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            status: int = resp.status
            return 200 <= status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def established_to(port: int, proc_net: Path = Path("/proc/net")) -> bool:
    for name in ("tcp", "tcp6"):
        try:
            rows = (proc_net / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) < 4:
                continue
            remote, state = cols[2], cols[3]
            if state == TCP_ESTABLISHED and int(remote.rsplit(":", 1)[1], 16) == port:
                return True
    return False


def fresh(path: Path, max_age_s: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime < max_age_s
    except OSError:
        return False


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "http":
        return 0 if http_ok(argv[1]) else 1
    if len(argv) == 2 and argv[0] == "tcp-established" and argv[1].isdigit():
        return 0 if established_to(int(argv[1])) else 1
    if len(argv) == 3 and argv[0] == "fresh" and argv[2].isdigit():
        return 0 if fresh(Path(argv[1]), float(argv[2])) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
