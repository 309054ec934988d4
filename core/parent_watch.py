"""A child process that outlives its parent stops itself.

Workers run in their own sessions (a Ctrl-C at the terminal must reach only the parent, which
drains the requests in flight first), so nothing stops them when the parent dies by SIGKILL or
an unhandled error. :class:`ParentWatch` notices the parent is gone (the process is reparented)
and asks this process to shut down gracefully with SIGTERM; if it is still running
``grace_s`` later, it exits hard.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)


class ParentWatch(threading.Thread):
    """Polls the parent pid every ``interval_s``; SIGTERM to self when it changes, exit after ``grace_s``.

    >>> watch = ParentWatch(os.getppid())
    >>> watch.parent_alive()
    True
    """

    def __init__(self, parent_pid: int, interval_s: float = 0.5, grace_s: float = 30.0) -> None:
        super().__init__(name="parent-watch", daemon=True)
        self.parent_pid = parent_pid
        self.interval_s = interval_s
        self.grace_s = grace_s
        self._stopped = threading.Event()

    def parent_alive(self) -> bool:
        return os.getppid() == self.parent_pid

    def run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            if not self.parent_alive():
                log.warning("parent process %d is gone: shutting down", self.parent_pid)
                os.kill(os.getpid(), signal.SIGTERM)
                if not self._stopped.wait(self.grace_s):
                    log.error("still running %.0fs after the parent died: exiting", self.grace_s)
                    os._exit(1)
                return

    def stop(self) -> None:
        self._stopped.set()
