"""Errors a user can fix, and how the command-line tools report them.

A `MinimaskError` says what is wrong with a file the user gave or a folder they pointed at, and
names it (and the record inside it: image id, annotation id, field). The CLIs print its message
as one line, without a traceback, and exit with status 2; everything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import sys


class MinimaskError(ValueError):
    """Bad input (data, checkpoint, run directory, flags); the message names the file at fault."""


def run_cli(main, argv=None) -> int:
    """`sys.exit(run_cli(main))`: main's status, or 2 after printing a MinimaskError's message."""
    try:
        return main(argv)
    except MinimaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
