"""weights_convert.npz: the converted file's format, metadata and refusals of other files.
"""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from minimaskrcnn.config import (Config)
from weights_convert import (LayoutError, WeightsFileError, convert, read_npz,
                             read_npz_metadata, write_npz)


ROOT = Path(__file__).resolve().parents[2]
STATE_DICTS = ROOT.parent / "shared" / "reference" / "state_dicts"


# --- the .npz ------------------------------------------------------------------------------------------------------

def test_npz_metadata_entry(small_files, tmp_path):
    dst = convert(small_files("mask_v2", "zip"), tmp_path / "w.npz")
    with np.load(dst, allow_pickle=False) as z:
        entry = z["__metadata__"]
    assert entry.shape == () and entry.dtype.kind == "U"
    meta = json.loads(str(entry))
    assert set(meta) == {"format", "format_version", "architecture", "config", "num_classes", "class_names",
                         "bn_eps", "source_name", "source_sha256", "converter_version"}
    assert meta["format"] == "minimaskrcnn-weights"


def test_read_npz_rejects_other_files(small_files, tmp_path):
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(2))
    with pytest.raises(WeightsFileError, match="other.npz is not a minimaskrcnn weights file"):
        read_npz(other)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(WeightsFileError, match="garbage.npz is not a minimaskrcnn weights file"):
        read_npz(garbage)
    config, arrays = read_npz(convert(small_files("faster_v1", "zip"), tmp_path / "w.npz"))
    meta = read_npz_metadata(tmp_path / "w.npz")
    write_npz(tmp_path / "v2.npz", arrays, {**meta, "format_version": 2})
    with pytest.raises(WeightsFileError, match="v2.npz has weights format version 2; this minimaskrcnn reads "
                                               "version 1: re-convert"):
        read_npz(tmp_path / "v2.npz")
    del arrays["roi_heads.box_predictor.cls_score.bias"]
    write_npz(tmp_path / "short.npz", arrays, meta)
    with pytest.raises(LayoutError, match="short.npz does not match the fasterrcnn_resnet18_fpn_custom layout: 1 "
                                          "missing key: roi_heads.box_predictor.cls_score.bias"):
        read_npz(tmp_path / "short.npz")


def test_a_failed_write_leaves_nothing(small_files, tmp_path, monkeypatch):
    dst = tmp_path / "w.npz"
    dst.write_bytes(b"previous")

    def savez_then_fail(f, **arrays):
        f.write(b"half an archive")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("weights_convert.npz.np.savez", savez_then_fail)
    with pytest.raises(OSError, match="No space left"):
        convert(small_files("faster_v1", "zip"), dst)
    assert dst.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["w.npz"]


def test_config_round_trips_through_metadata(small_files, tmp_path):
    config, _ = read_npz(convert(small_files("mask_v1_bn", "zip"), tmp_path / "w.npz"))
    assert dataclasses.asdict(Config.from_dict(json.loads(config.to_json()))) == dataclasses.asdict(config)
