"""io.video: reading the shared street video and GIFs, writing MP4/AVI/GIF.

The loop that segments a video frame by frame (`cli.segment.segment_video`) is tested in tests/cli/test_segment_video.py.
"""

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED
from minimaskrcnn.io import video
from videos import frames as _frames, write as _write

VTEST = SHARED / "video" / "vtest.avi"


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


def test_missing_pyav_message(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(video.VideoExtraMissing, match=r'pip install "minimaskrcnn\[video\]"'):
        video.check_support("a.avi", "b.gif")
    video.check_support("a.gif", "b.gif")                             # GIF to GIF needs Pillow only
