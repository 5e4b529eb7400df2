"""Errors a trial raises that its launcher treats specially.

A trial fails in two ways that call for different handling. A worker that dies (killed, out of
memory, a lost node) is worth restarting from the last checkpoint; a trial whose dataset is
missing, whose model cannot be built or whose optimizer refuses its settings fails the same way
on every attempt, and retrying it only burns the cluster's time and the user's patience.
"""

from __future__ import annotations


class PermanentTrialError(RuntimeError):
    """A failure that will repeat on every attempt (data, model, optimizer or engine set-up).

    The trial records it as ``failed`` in its ``runs`` row; launchers must not retry it.
    ``reason`` is the original error as ``"Type: message"``, the text the row records. It is an
    attribute because it must cross processes: Ray pickles a worker's error for its launcher, and
    pickling keeps an exception's attributes but drops its ``__cause__``.
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = message if reason is None else reason
