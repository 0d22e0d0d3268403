"""A progress line on stderr for long commands (``submit --wait``, ``evaluate``): phase and elapsed.

Shown only when stderr is a terminal; piped or redirected, nothing extra is
written (scripts read stdout and one-line errors only). The line is rewritten
in place twice a second and erased when the command ends::

    with Progress("text_stats") as progress:
        run(progress=progress.phase)      # "text_stats: dynamic  4 s"
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

__all__ = ["Progress"]


class Progress:
    def __init__(self, what: str, *, stream: TextIO | None = None, interval: float = 0.5) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.what, self.interval = what, interval
        self.current = "starting"
        self.started = time.monotonic()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def phase(self, name: str) -> None:
        """The phase now running (called from any thread)."""
        self.current = name
        self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        line = f"{self.what}: {self.current}  {time.monotonic() - self.started:.0f} s"
        with self._lock:
            self.stream.write("\r\x1b[2K" + line)
            self.stream.flush()

    def _tick(self) -> None:
        while not self._done.wait(self.interval):
            self._draw()

    def __enter__(self) -> Progress:
        if self.enabled:
            self._draw()
            self._thread = threading.Thread(target=self._tick, name="sandgate-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self.enabled:
            with self._lock:
                self.stream.write("\r\x1b[2K")
                self.stream.flush()
