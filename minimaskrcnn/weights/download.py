"""Downloading a checkpoint: streamed to a temporary file, renamed into place only after the length and the sha256
check; any failure removes the temporary file and raises `WeightsError` with one line that says what could not be
fetched from where and how to pass a local file instead. Only the standard library is used (urllib).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from minimaskrcnn._version import __version__

DEFAULT_TIMEOUT = 30.0          # seconds, per socket operation (connect, each read)
CHUNK = 1 << 20


class WeightsError(RuntimeError):
    """Weights could not be found, downloaded, verified or converted. The message is one line."""


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest, *, sha256_prefix: str, what: str | None = None, progress=None,
             timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Stream `url` to `dest`, keeping it only if its length matches Content-Length and its sha256 starts with
    `sha256_prefix`. Raises `WeightsError` (one line) and leaves nothing behind on any failure."""
    dest = Path(dest)
    what = what or dest.name
    advice = (f"If this machine is offline, fetch {dest.name} elsewhere and pass the local file instead: "
              f"--weights path/to/{dest.name} (or a converted .npz)")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise WeightsError(f"cannot write to the weights cache {dest.parent}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            digest, size = _stream(url, f, what, progress, timeout)
        if not digest.startswith(sha256_prefix):
            raise WeightsError(f"downloaded {what} from {url} but its sha256 is {digest[:16]}..., not "
                               f"{sha256_prefix}... as its name says (corrupted or tampered); the file was removed")
        os.replace(tmp, dest)
        return dest
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, WeightsError):
            raise
        reason = _network_reason(e, timeout)
        if reason is None:
            raise
        raise WeightsError(f"could not download {what} from {url}: {reason}. {advice}") from None


def _stream(url, f, what, progress, timeout):
    """Copy the response body of `url` into `f`; (sha256 hex digest, bytes)."""
    request = urllib.request.Request(url, headers={"User-Agent": f"minimaskrcnn/{__version__}"})
    h, done = hashlib.sha256(), 0
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        bar = _Bar(what, total, progress)
        try:
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                h.update(chunk)
                done += len(chunk)
                bar.update(done)
        finally:
            bar.close()
    if total is not None and done != total:
        raise http.client.IncompleteRead(b"", total - done)
    return h.hexdigest(), done


def _network_reason(e: BaseException, timeout) -> str | None:
    """A short reason for a download failure, or None if `e` is not one (e.g. KeyboardInterrupt)."""
    if isinstance(e, urllib.error.HTTPError):
        e.close()
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        e = e.reason if isinstance(e.reason, BaseException) else e
        if isinstance(e, urllib.error.URLError):
            return str(e.reason)
    if isinstance(e, http.client.IncompleteRead):
        return f"the connection closed early, {e.expected} bytes short (truncated download)"
    if isinstance(e, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout:g} s (timed out)"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (server unreachable or offline)"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the host ({e.strerror or e}; offline?)"
    if isinstance(e, (OSError, http.client.HTTPException, ValueError)):
        text = getattr(e, "strerror", None) or str(e) or type(e).__name__
        return " ".join(text.split())
    return None


class _Bar:
    """`downloading name  45%  78.2/170.1 MB` on stderr, redrawn at most 5 times a second; on a terminal unless told."""

    def __init__(self, name, total, enabled, stream=None):
        self.stream = stream or sys.stderr
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.name, self.total, self.enabled = name, total, enabled
        self.done, self.last, self.drawn = 0, 0.0, False

    def update(self, done, force=False):
        self.done = done
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < 0.2):
            return
        self.last = now
        size = f"{100 * done / self.total:3.0f}%  {done / 1e6:.1f}/{self.total / 1e6:.1f} MB" if self.total \
            else f"{done / 1e6:.1f} MB"
        self.stream.write(f"\r\033[Kdownloading {self.name}  {size}")
        self.stream.flush()
        self.drawn = True

    def close(self):
        if self.enabled:
            self.update(self.done, force=True)
            self.stream.write("\n")
            self.stream.flush()
