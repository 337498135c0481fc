"""SIGTERM and SIGINT: one line and a clean exit instead of a traceback.

SLURM sends SIGTERM before it kills a preempted or timed-out job (KillWait, 30 s by default),
and Ctrl-C sends SIGINT. `ript` steps turn either into `Interrupted`, which the command line
prints as one line and exits with 128 + the signal number. Training defers them instead
(`deferred_signals`): the step in flight finishes, a checkpoint is written, then it stops.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """A run stopped by a signal; the message says what was kept."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum, f"stopped by {signal_name(signum)}; no output was written")


def install_interrupt_handlers() -> None:
    """SIGTERM raises `Interrupted` like SIGINT raises KeyboardInterrupt, so `finally`
    blocks (temporaries removed, simulator workers closed) run on both."""
    signal.signal(signal.SIGTERM, _raise_interrupted)


@contextlib.contextmanager
def deferred_signals() -> Iterator[Callable[[], int | None]]:
    """Within the block SIGTERM and SIGINT are only recorded; the yielded function returns
    the first one received (or None). A second signal acts at once, as a user pressing
    Ctrl-C twice expects."""
    received: list[int] = []

    def record(signum: int, frame: object) -> None:
        if received:
            _raise_interrupted(signum, frame)
        received.append(signum)

    previous = {s: signal.signal(s, record) for s in SIGNALS}
    try:
        yield lambda: received[0] if received else None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
