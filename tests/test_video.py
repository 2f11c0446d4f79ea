"""video: reading the shared street video and GIFs, writing MP4/AVI/GIF, frame selection, JSON lines, atomicity.

`segment_video` is driven here by `_fixed_detections`, a plain function returning hand-made Detections: these tests
check the video plumbing, not the network (that is test_cli_end_to_end.py).
"""
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED
from minimaskrcnn import rle, video
from minimaskrcnn.config import COCO_CATEGORIES
from minimaskrcnn.detections import Detections

VTEST = SHARED / "video" / "vtest.avi"


def _frames(n, h=48, w=64):
    """n smooth, distinct frames (compress well, survive lossy codecs)."""
    y, x = np.mgrid[:h, :w]
    return [np.stack([(x * 3 + 10 * i) % 256, (y * 4) % 256, np.full_like(x, 20 * i % 256)], axis=2).astype(np.uint8)
            for i in range(n)]


def _fixed_detections(image):
    h, w = image.shape[:2]
    masks = np.zeros((1, h, w), np.float32)
    masks[0, 10:30, 20:40] = 0.9
    return Detections(np.array([[20, 10, 40, 30]], np.float32), np.array([1], np.int64),
                      np.array([0.8], np.float32), masks, COCO_CATEGORIES, (h, w))


def _write(path, frames, fps):
    with video.VideoWriter(path, fps) as wr:
        for f in frames:
            wr.write(f, duration=1 / fps)


# --- reading ------------------------------------------------------------------------------------------------------------

def test_reads_the_shared_msmpeg4_video():
    info, frames = video.open_video(VTEST)
    assert (info.fps, info.frame_count, info.width, info.height) == (10, 795, 768, 576)
    first = [next(frames) for _ in range(3)]
    frames.close()
    assert [f.index for f in first] == [0, 1, 2]
    assert [f.time for f in first] == pytest.approx([0.0, 0.1, 0.2])
    assert first[0].image.shape == (576, 768, 3) and first[0].image.dtype == np.uint8
    assert first[0].image.std() > 20                                   # a real street scene, not a blank frame
    assert not np.array_equal(first[0].image, first[2].image)


@pytest.mark.parametrize("ext", [".mp4", ".avi", ".mkv", ".webm"])
def test_write_and_read_back(tmp_path, ext):
    frames = _frames(12)
    _write(tmp_path / f"v{ext}", frames, 12)
    info, back = video.open_video(tmp_path / f"v{ext}")
    back = [f.image for f in back]
    assert info.fps == 12 and len(back) == 12 and (info.width, info.height) == (64, 48)
    for a, b in zip(frames, back):
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 6       # lossy, but the same pictures


def test_odd_frame_size_is_padded_for_h264(tmp_path):
    _write(tmp_path / "odd.mp4", _frames(3, 47, 63), 5)
    info, back = video.open_video(tmp_path / "odd.mp4")
    assert (info.width, info.height) == (64, 48) and len(list(back)) == 3


def test_gif_round_trip_keeps_durations(tmp_path):
    frames = _frames(4)
    with video.VideoWriter(tmp_path / "a.gif", 10) as wr:
        for f, d in zip(frames, (0.1, 0.2, 0.1, 0.5)):
            wr.write(f, duration=d)
    info, back = video.open_video(tmp_path / "a.gif")
    back = list(back)
    assert [f.duration for f in back] == pytest.approx([0.1, 0.2, 0.1, 0.5])
    assert [f.time for f in back] == pytest.approx([0.0, 0.1, 0.3, 0.4])
    assert info.frame_count == 4 and info.fps == pytest.approx(4 / 0.9)
    for a, b in zip(frames, back):
        assert np.abs(a.astype(int) - b.image.astype(int)).mean() < 6


def test_gif_transparency_over_white(tmp_path):
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    img.save(tmp_path / "t.gif", transparency=1)
    _, frames = video.open_video(tmp_path / "t.gif")
    assert (next(frames).image == 255).all()


@pytest.mark.parametrize("content", [b"", b"not a video at all\n" * 20])
def test_unreadable_video_one_line(tmp_path, content):
    bad = tmp_path / "bad.avi"
    bad.write_bytes(content)
    with pytest.raises(video.VideoReadError) as e:
        info, frames = video.open_video(bad)
        list(frames)
    assert str(e.value).startswith(str(bad) + ": ") and "\n" not in str(e.value)


def test_truncated_video_fails_without_leaving_files(tmp_path):
    cut = tmp_path / "cut.avi"
    cut.write_bytes(VTEST.read_bytes()[:4096])
    with pytest.raises(video.VideoReadError):
        video.segment_video(_fixed_detections, cut, tmp_path / "out.mp4")
    assert os.listdir(tmp_path) == ["cut.avi"]


# --- segment_video ------------------------------------------------------------------------------------------------------

def test_every_and_max_frames(tmp_path):
    src = tmp_path / "in.mp4"
    _write(src, _frames(20), 10)
    seen = []

    def detect(image):
        seen.append(image.shape)
        return _fixed_detections(image)
    s = video.segment_video(detect, src, tmp_path / "out.mp4", every=3, max_frames=14, jsonl=tmp_path / "d.jsonl")
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
    video.segment_video(_fixed_detections, src, tmp_path / "out.gif", every=2)
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
        video.segment_video(detect, src, tmp_path / "out.mp4", jsonl=tmp_path / "d.jsonl")
    assert os.listdir(tmp_path) == ["in.avi"]


def test_refuses_to_write_over_its_input(tmp_path):
    from minimaskrcnn import outputs
    src = tmp_path / "in.gif"
    _write(src, _frames(2), 10)
    before = src.read_bytes()
    with pytest.raises(ValueError, match="refusing"):
        video.segment_video(_fixed_detections, src, src, protected=outputs.protect([src]))
    assert src.read_bytes() == before and os.listdir(tmp_path) == ["in.gif"]


def test_missing_pyav_message(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(video.VideoExtraMissing, match=r'pip install "minimaskrcnn\[video\]"'):
        video.check_support("a.avi", "b.gif")
    video.check_support("a.gif", "b.gif")                             # GIF to GIF needs Pillow only
