"""Weights by name or path: fetch torchvision's official checkpoints, verify their hash, cache, convert once.

    resolve_weights("maskrcnn_resnet50_fpn_coco")   -> Path of the converted .npz (downloaded and converted once)
    resolve_weights("my_model.pth")                 -> converted once into the cache, keyed by the file's sha256
    resolve_weights("my_model.npz")                 -> returned as is, after a check of its metadata
    load_weights(weights)                           -> (Config, {state-dict key: array})

Official names (torchvision's COCO weights, facts §9) map to file names under the base URL
`https://download.pytorch.org/models/`; the 8 hex digits in a file name are the start of its sha256, checked after
every download. The base URL can be changed (argument `base_url`, or env `MINIMASKRCNN_WEIGHTS_URL`, e.g. a mirror
or a `file://` directory); so can the registry of names (argument `registry`, for tests and private mirrors).

Cache (`$MINIMASKRCNN_HOME`, default `~/.cache/minimaskrcnn`):
    checkpoints/<official file>.pth       the downloaded checkpoint, hash verified (kept, to re-convert offline)
    converted/<official file stem>.npz    converted from it
    converted/sha256-<hex>.npz            converted from a local checkpoint with that sha256

Downloads stream to a temporary file in `checkpoints/` and are renamed into place only after the length and the hash
check; any failure removes the temporary file and raises `WeightsError` with one line that says what could not be
fetched from where and how to pass a local file instead. Only the standard library is used (urllib).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from . import __version__

OFFICIAL_WEIGHTS = {            # torchvision models/detection/{mask,faster}_rcnn.py, *_Weights.COCO_V1 urls
    "maskrcnn_resnet50_fpn_coco": "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
    "fasterrcnn_resnet50_fpn_coco": "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth",
    "maskrcnn_resnet50_fpn_v2_coco": "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
    "fasterrcnn_resnet50_fpn_v2_coco": "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth",
}
DEFAULT_BASE_URL = "https://download.pytorch.org/models/"
URL_ENV = "MINIMASKRCNN_WEIGHTS_URL"
HOME_ENV = "MINIMASKRCNN_HOME"
DEFAULT_TIMEOUT = 30.0          # seconds, per socket operation (connect, each read)
CHUNK = 1 << 20
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+\Z")


class WeightsError(RuntimeError):
    """Weights could not be found, downloaded, verified or converted. The message is one line."""


def cache_home(cache_dir=None) -> Path:
    """The cache directory: `cache_dir`, else $MINIMASKRCNN_HOME, else ~/.cache/minimaskrcnn."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "minimaskrcnn").expanduser()


def load_weights(weights, **kwargs):
    """(Config, {key: array}) for an official name, a `.pth`/`.pt` checkpoint or a converted `.npz`.

    Keyword arguments are those of `resolve_weights`.
    """
    from weights_convert import CheckpointError, read_npz
    path = resolve_weights(weights, **kwargs)
    try:
        return read_npz(path)
    except CheckpointError as e:
        raise WeightsError(str(e)) from None


def resolve_weights(weights, *, cache_dir=None, base_url=None, registry=None, progress=None,
                    timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Path of a converted `.npz` for `weights`: an official name, a checkpoint path or an `.npz` path.

    progress: draw a download bar on stderr (None: only when stderr is a terminal; False: never).
    registry: {name: file name with its sha256 prefix}, default `OFFICIAL_WEIGHTS`.
    """
    registry = OFFICIAL_WEIGHTS if registry is None else registry
    home = cache_home(cache_dir)
    if isinstance(weights, str) and weights in registry:
        return _resolve_official(weights, registry[weights], home, base_url, progress, timeout)
    path = Path(os.fspath(weights)).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".npz":
            _check_npz(path)
            return path
        return _convert_local(path, home)
    if path.suffix or os.sep in str(weights) or "/" in str(weights):
        raise WeightsError(f"no such weights file: {path}")
    raise WeightsError(f"unknown weights {str(weights)!r}: give one of {', '.join(registry)}, or a path to a "
                       f"torchvision .pth/.pt checkpoint or a converted .npz")


def _check_npz(path: Path):
    from weights_convert import CheckpointError, read_npz_metadata
    try:
        read_npz_metadata(path)
    except CheckpointError as e:
        raise WeightsError(str(e)) from None


def _cached_npz(path: Path) -> bool:
    """True if `path` is a readable converted file of the current format (else it is (re)made)."""
    from weights_convert import CheckpointError, read_npz_metadata
    if not path.is_file():
        return False
    try:
        read_npz_metadata(path)
        return True
    except CheckpointError:
        return False


def _convert(src: Path, dst: Path, source_name: str) -> Path:
    from weights_convert import CheckpointError, convert
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        return convert(src, dst, source_name=source_name)
    except CheckpointError as e:
        raise WeightsError(f"cannot convert {src}: {e}") from None


def _convert_local(path: Path, home: Path) -> Path:
    out = home / "converted" / f"sha256-{file_sha256(path)}.npz"
    if _cached_npz(out):
        return out
    return _convert(path, out, path.name)


def expected_sha256_prefix(filename: str) -> str:
    """The hex digits torchvision puts in a checkpoint's file name: the start of the file's sha256."""
    match = _HASH_IN_NAME.search(filename)
    if match is None:
        raise WeightsError(f"registry file name {filename!r} carries no sha256 prefix (name-<hex>.pth)")
    return match.group(1)


def _resolve_official(name, filename, home, base_url, progress, timeout) -> Path:
    prefix = expected_sha256_prefix(filename)
    out = home / "converted" / (filename.rsplit(".", 1)[0] + ".npz")
    if _cached_npz(out):
        return out
    checkpoint = home / "checkpoints" / filename
    if not (checkpoint.is_file() and file_sha256(checkpoint).startswith(prefix)):
        base = base_url or os.environ.get(URL_ENV) or DEFAULT_BASE_URL
        download(base.rstrip("/") + "/" + filename, checkpoint, sha256_prefix=prefix, what=name,
                 progress=progress, timeout=timeout)
    return _convert(checkpoint, out, filename)


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
