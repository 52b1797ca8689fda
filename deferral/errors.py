"""The one exception type a user can cause. The CLI prints its message as a single line and exits 2."""


class DeferralError(Exception):
    """A problem the user can fix (bad path, vocab mismatch, bad flag ...).

    The message must name the problem and the fix in one line.
    """
