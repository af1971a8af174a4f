"""``python -m cizo_cli ...`` is the ``cizo`` command."""

from __future__ import annotations

import sys

from cizo_cli.main import main

sys.exit(main())
