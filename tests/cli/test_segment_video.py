"""cli.segment.segment_video: frame selection, JSON lines, overlays, atomicity, input protection.

`segment_video` is driven here by `fixed_detections`, a plain function returning hand-made Detections: these tests
check the video loop, not the network (that is tests/cli/test_end_to_end.py).
"""
import json
import os

import numpy as np
import pytest

from conftest import SHARED
from minimaskrcnn.io import coco as rle, video
from minimaskrcnn.cli.segment import segment_video
from videos import fixed_detections as _fixed_detections, frames as _frames, write as _write

VTEST = SHARED / "video" / "vtest.avi"


def test_truncated_video_fails_without_leaving_files(tmp_path):
    cut = tmp_path / "cut.avi"
    cut.write_bytes(VTEST.read_bytes()[:4096])
    with pytest.raises(video.VideoReadError):
        segment_video(_fixed_detections, cut, tmp_path / "out.mp4")
    assert os.listdir(tmp_path) == ["cut.avi"]


def test_every_and_max_frames(tmp_path):
    src = tmp_path / "in.mp4"
    _write(src, _frames(20), 10)
    seen = []

    def detect(image):
        seen.append(image.shape)
        return _fixed_detections(image)
    s = segment_video(detect, src, tmp_path / "out.mp4", every=3, max_frames=14, jsonl=tmp_path / "d.jsonl")
    assert (s.frames_read, s.frames_processed, len(seen)) == (14, 5, 5)   # frames 0, 3, 6, 9, 12
    assert s.objects == {"person": 5}
    info, out = video.open_video(tmp_path / "out.mp4")
    assert info.fps == pytest.approx(10 / 3) and len(list(out)) == 5
    records = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == [0, 3, 6, 9, 12]
    assert [r["time"] for r in records] == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.2])
    d = records[1]["detections"][0]
    assert d["label"] == "person" and d["category_id"] == 1 and d["bbox"] == [20.0, 10.0, 20.0, 20.0]
    assert d["score"] == pytest.approx(0.8)
    m = rle.decode(d["segmentation"])
    assert m.shape == (48, 64) and m.sum() == 400 and m[10:30, 20:40].all()
    assert sorted(os.listdir(tmp_path)) == ["d.jsonl", "in.mp4", "out.mp4"]


def test_overlay_frames_show_the_detections(tmp_path):
    src = tmp_path / "in.gif"
    frames = [np.full((48, 64, 3), 60 * i + 40, np.uint8) for i in range(3)]        # plain grey, distinct
    with video.VideoWriter(src, 10) as wr:
        for f in frames:
            wr.write(f, 0.1)
    segment_video(_fixed_detections, src, tmp_path / "out.gif", every=2)
    info, out = video.open_video(tmp_path / "out.gif")
    out = list(out)
    assert len(out) == 2 and [f.duration for f in out] == pytest.approx([0.2, 0.1])   # frame 0 stands for 0 and 1
    for f, grey in zip(out, (40, 160)):
        assert np.abs(f.image[20, 30].astype(int) - grey).max() > 30               # tinted inside the mask
        assert np.abs(f.image[45, 5].astype(int) - grey).max() <= 3                # untouched far away


def test_failure_midway_leaves_no_outputs(tmp_path):
    src = tmp_path / "in.avi"
    _write(src, _frames(6), 10)
    calls = []

    def detect(image):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("model failed")
        return _fixed_detections(image)
    with pytest.raises(RuntimeError):
        segment_video(detect, src, tmp_path / "out.mp4", jsonl=tmp_path / "d.jsonl")
    assert os.listdir(tmp_path) == ["in.avi"]


def test_refuses_to_write_over_its_input(tmp_path):
    from minimaskrcnn import atomic
    src = tmp_path / "in.gif"
    _write(src, _frames(2), 10)
    before = src.read_bytes()
    with pytest.raises(ValueError, match="refusing"):
        segment_video(_fixed_detections, src, src, protected=atomic.protect([src]))
    assert src.read_bytes() == before and os.listdir(tmp_path) == ["in.gif"]
