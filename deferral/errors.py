"""The one exception type a user can cause. The CLI prints its message as a single line and exits 2."""

import sys
from typing import Callable


class DeferralError(Exception):
    """A problem the user can fix (bad path, vocab mismatch, bad flag ...).

    The message must name the problem and the fix in one line.
    """


def exit_code_of(run: Callable[[], int]) -> int:
    """run()'s exit code, or 2 after printing a DeferralError as one `error:` line (scripts' mains)."""
    try:
        return run()
    except DeferralError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
