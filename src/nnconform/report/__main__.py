"""``python -m nnconform.report golden ...``: the report's command-line tools (``compare`` has its own module)."""

import sys

from .golden import main as golden_main

COMMANDS = {"golden": golden_main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m nnconform.report {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        sys.exit(2)
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
