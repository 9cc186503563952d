"""``python -m sweeps.stack ...`` = ``siamese-sweep stack ...`` (kept for scripts written before the CLI had it)."""
import sys

from sweeps.cli import main

sys.exit(main(["stack", *sys.argv[1:]]))
