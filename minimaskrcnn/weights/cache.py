"""Weights by name or path: fetch torchvision's official checkpoints, verify their hash, cache, convert once.

    resolve_weights("maskrcnn_resnet50_fpn_coco")   -> Path of the converted .npz (downloaded and converted once)
    resolve_weights("my_model.pth")                 -> converted once into the cache, keyed by the file's sha256
    resolve_weights("my_model.npz")                 -> returned as is, after a check of its metadata
    load_weights(weights)                           -> (Config, {state-dict key: array})

Official names and where they are fetched from: `names.py`; the download itself: `download.py`.

Cache (`$MINIMASKRCNN_HOME`, default `~/.cache/minimaskrcnn`):
    checkpoints/<official file>.pth       the downloaded checkpoint, hash verified (kept, to re-convert offline)
    converted/<official file stem>.npz    converted from it
    converted/sha256-<hex>.npz            converted from a local checkpoint with that sha256
"""
from __future__ import annotations

import os
from pathlib import Path

from minimaskrcnn.weights.download import DEFAULT_TIMEOUT, WeightsError, download, file_sha256
from minimaskrcnn.weights.names import DEFAULT_BASE_URL, OFFICIAL_WEIGHTS, URL_ENV, expected_sha256_prefix

HOME_ENV = "MINIMASKRCNN_HOME"


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


def weights_family(path) -> str:
    """"torchvision" or "matterport": the family of a converted `.npz` (its metadata's "family")."""
    from weights_convert import CheckpointError, read_npz_metadata
    try:
        return read_npz_metadata(path).get("family", "torchvision")
    except CheckpointError as e:
        raise WeightsError(str(e)) from None


def load_matterport_weights(weights, config=None, class_names=None, **kwargs):
    """(MatterportConfig, {Keras weight name: array}) for a matterport `.h5` / pytorch-mask-rcnn `.pth` (converted
    once into the cache) or its `.npz`; `config` and `class_names` as `weights_convert.matterport_convert`'s."""
    from weights_convert import CheckpointError
    from weights_convert.matterport_convert import read_matterport
    path = resolve_weights(weights, **kwargs)
    try:
        return read_matterport(path, config, class_names)
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
                       f"torchvision .pth/.pt checkpoint, a matterport .h5 or a converted .npz")


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
