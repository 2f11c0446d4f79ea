"""A one-line progress bar on stderr for multi-image and video runs: drawn only on a terminal, redrawn at most 10 times
a second, and cleared before any message the caller prints through `Progress.write`."""
from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """`with Progress(total, "images") as p: ... p.update(); p.write("a message")`. total=None: a counter only."""

    def __init__(self, total=None, unit: str = "images", enabled=None, stream=None, width: int = 28):
        self.stream = sys.stderr if stream is None else stream
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total, self.unit, self.enabled, self.width = total, unit, enabled, width
        self.done, self.start, self._last_draw, self._drawn = 0, time.perf_counter(), 0.0, False

    def __enter__(self) -> "Progress":
        self._draw(force=True)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.done += n
        self._draw(force=self.total is not None and self.done >= self.total)

    def write(self, line: str) -> None:
        """Print a message line to the stream without tearing the bar."""
        self._clear()
        print(line, file=self.stream, flush=True)
        self._draw(force=True)

    def close(self) -> None:
        if self.enabled and self._drawn:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
        self.enabled = False

    def _clear(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\r\033[K")
            self._drawn = False

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        self.stream.write("\r\033[K" + self.render(now - self.start))
        self.stream.flush()
        self._drawn = True

    def render(self, elapsed: float) -> str:
        """The bar's text after `elapsed` seconds, e.g. "[#######.......]  5/10 images  1.2 s/image  ETA 6 s"."""
        rate = f"{elapsed / self.done:.2f} s/{self.unit.rstrip('s')}" if self.done else ""
        if not self.total:
            return f"{self.done} {self.unit}  {rate}".rstrip()
        filled = int(self.width * min(self.done / self.total, 1.0))
        bar = "#" * filled + "." * (self.width - filled)
        eta = f"  ETA {_duration(elapsed / self.done * (self.total - self.done))}" if 0 < self.done < self.total else ""
        return f"[{bar}] {self.done}/{self.total} {self.unit}  {rate}{eta}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"
