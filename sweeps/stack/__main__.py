"""``python -m sweeps.stack up --dir .stack``: see sweeps/stack/cli.py."""

from __future__ import annotations

from sweeps.stack.cli import main

raise SystemExit(main())
