"""The converted weights file: an uncompressed `.npz` of the state dict plus one JSON metadata entry.

Layout (read with `np.load(path, allow_pickle=False)`):

    <state-dict key>   one array per key of the (renamed) torchvision state dict, dtype as stored in the checkpoint
                       (float16 stays float16: the loader casts), C-contiguous, native byte order
    __metadata__       0-d unicode array holding JSON:
                       {"format": "minimaskrcnn-weights", "format_version": 1,
                        "architecture": "maskrcnn_resnet50_fpn" | ... | descriptive name,
                        "config": Config as a dict, "num_classes": K, "class_names": [...], "bn_eps": eps,
                        "source_name": file name, "source_sha256": hex, "converter_version": "x.y.z"}

Files are written to a temporary file in the destination directory and renamed into place (`os.replace`), so a
reader never sees a half-written file. `read_npz` is the only reader: the runtime (`minimaskrcnn.weights`) uses it too.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from minimaskrcnn.config import Config

from .errors import CheckpointError, WeightsFileError
from .layout import check_state_dict

FORMAT = "minimaskrcnn-weights"
FORMAT_VERSION = 1
METADATA_KEY = "__metadata__"
METADATA_FIELDS = ("format", "format_version", "architecture", "config", "num_classes", "class_names", "bn_eps",
                   "source_name", "source_sha256", "converter_version")


def write_npz(path, arrays: dict, metadata: dict) -> Path:
    """Write `arrays` and `metadata` atomically to `path` (which keeps its name, `.npz` or not)."""
    path = Path(path)
    if METADATA_KEY in arrays:
        raise ValueError(f"{METADATA_KEY} is reserved for the metadata entry")
    text = np.array(json.dumps(metadata))                  # () unicode
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such directory for the output file", str(path.parent))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, allow_pickle=False, **{METADATA_KEY: text}, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def read_npz_metadata(path) -> dict:
    """The metadata of a converted weights file, after checking its format and version (reads no weight array)."""
    name = os.path.basename(os.fspath(path))
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files") or METADATA_KEY not in z.files:
                raise WeightsFileError(f"{name} is not a minimaskrcnn weights file (no {METADATA_KEY} entry); "
                                       f"convert a torchvision checkpoint with weights-convert")
            entry = z[METADATA_KEY]
    except CheckpointError:
        raise
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError, zipfile.BadZipFile) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise WeightsFileError(f"{name} is not a minimaskrcnn weights file: {e}") from None
    if getattr(entry, "ndim", None) != 0 or entry.dtype.kind != "U":
        raise WeightsFileError(f"{name} is not a minimaskrcnn weights file ({METADATA_KEY} is not a JSON string)")
    try:
        meta = json.loads(str(entry[()]))
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise WeightsFileError(f"{name} is not a minimaskrcnn weights file ({METADATA_KEY} has no format "
                               f"{FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise WeightsFileError(f"{name} has weights format version {meta.get('format_version')!r:.20}; this "
                               f"minimaskrcnn reads version {FORMAT_VERSION}: re-convert the original checkpoint "
                               f"with weights-convert")
    missing = [f for f in METADATA_FIELDS if f not in meta]
    if missing:
        raise WeightsFileError(f"{name}: metadata lacks {', '.join(missing)}")
    return meta


def read_npz(path):
    """(Config, {key: array}) of a converted weights file, validated against the layout its config describes."""
    name = os.path.basename(os.fspath(path))
    meta = read_npz_metadata(path)
    if meta.get("family", "torchvision") != "torchvision":
        raise WeightsFileError(f"{name} holds {meta.get('family')!r:.20}-family weights; read it with "
                               f"weights_convert.matterport_convert.read_matterport_npz or minimaskrcnn.load")
    try:
        config = Config.from_dict(meta["config"])
    except (TypeError, ValueError) as e:
        raise WeightsFileError(f"{name}: invalid config in metadata: {e}") from None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != METADATA_KEY}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise WeightsFileError(f"{name}: unreadable array: {e}") from None
    check_state_dict(config, arrays, what=name)
    return config, arrays
