"""Ctrl-C and SIGTERM during a run: both are recorded in result.json as the run's failure, then
re-raised so that a sweep stops too."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class Terminated(BaseException):
    """SIGTERM arrived (e.g. Slurm time limit, `kill`): recorded like an interrupt."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises Terminated inside the block (only the main thread can set a handler;
    elsewhere the block runs unchanged); the previous handler comes back after it."""
    def on_term(signum, frame):
        raise Terminated(f"signal {signal.Signals(signum).name} received")

    main = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, on_term) if main else None
    try:
        yield
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def interrupt_behind(e: BaseException) -> BaseException | None:
    """The KeyboardInterrupt or Terminated that ``e`` was raised while handling, if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (KeyboardInterrupt, Terminated)):
            return e
        e = e.__context__
    return None
