"""io.journal: records survive a reopen bit for bit (so the resumed results JSON equals the uninterrupted one), a torn
last line is dropped, other settings are refused, and a record is reused only while its input and files are intact.
"""
import json
import os

import pytest
from hypothesis import given, strategies as st

from minimaskrcnn.io.journal import JOURNAL_NAME, Journal, JournalMismatch, input_identity

# the weights as a tuple: JSON reads it back as a list, and that must still count as the same settings
SETTINGS = {"minimaskrcnn": "1", "weights": ("w.npz", 1, 2), "score_threshold": 0.5, "json": True}

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
entries = st.lists(st.fixed_dictionaries({
    "image_id": st.integers(0, 2**40), "category_id": st.integers(0, 90), "file_name": st.text(max_size=12),
    "bbox": st.lists(finite, min_size=4, max_size=4), "score": st.floats(0, 1, width=32),
    "segmentation": st.fixed_dictionaries({"size": st.lists(st.integers(1, 5000), min_size=2, max_size=2),
                                           "counts": st.text("0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`"
                                                             "abcdefghijklmno", max_size=40)})}), max_size=5)


def _record(i, entries_, path="x.png"):
    return {"index": i, "input": path, "stem": f"s{i}", "image_id": i + 1, "files": [], "objects": [],
            "seconds": 0.25, "entries": entries_}


@given(st.lists(entries, min_size=1, max_size=6))
def test_records_read_back_give_the_same_results_json(tmp_path_factory, per_image):
    out = tmp_path_factory.mktemp("j")
    j = Journal.open(out, SETTINGS, resume=False)
    for i, e in enumerate(per_image):
        j.append(_record(i, e))
    j.close()
    again = Journal.open(out, SETTINGS, resume=True)
    again.close()
    assert again.resumed and sorted(again.kept) == list(range(len(per_image)))
    uninterrupted = json.dumps([x for e in per_image for x in e])
    resumed = json.dumps([x for i in sorted(again.kept) for x in again.kept[i]["entries"]])
    assert resumed == uninterrupted


@pytest.mark.parametrize("cut", [1, 10, -1])
def test_a_torn_last_line_is_dropped_and_never_appended_to(tmp_path, cut):
    j = Journal.open(tmp_path, SETTINGS, resume=False)
    j.append(_record(0, []))
    j.append(_record(1, []))
    j.close()
    path = tmp_path / JOURNAL_NAME
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - cut] if cut > 0 else data[:-1])  # the kill came mid-write of record 1
    again = Journal.open(tmp_path, SETTINGS, resume=True)
    assert sorted(again.kept) == [0]
    again.append(_record(1, []))
    again.close()
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and [json.loads(x)["index"] for x in lines[1:-1]] == [0, 1]


def test_other_settings_are_refused_and_the_journal_kept(tmp_path):
    Journal.open(tmp_path, SETTINGS, resume=False).close()
    before = (tmp_path / JOURNAL_NAME).read_bytes()
    with pytest.raises(JournalMismatch, match="score_threshold"):
        Journal.open(tmp_path, {**SETTINGS, "score_threshold": 0.7}, resume=True)
    assert (tmp_path / JOURNAL_NAME).read_bytes() == before
    fresh = Journal.open(tmp_path, {**SETTINGS, "score_threshold": 0.7}, resume=False)   # without --resume: afresh
    fresh.close()
    assert not fresh.resumed and not fresh.kept


def test_a_record_is_reused_only_while_its_input_and_files_are_intact(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"1234")
    (tmp_path / "a_overlay.png").write_bytes(b"png")
    ident = input_identity(image)
    j = Journal.open(tmp_path, SETTINGS, resume=False)
    j.append({**_record(0, [], str(image)), **ident, "stem": "a", "image_id": 7, "files": ["a_overlay.png"]})
    j.close()
    j = Journal.open(tmp_path, SETTINGS, resume=True)
    assert j.usable(0, ident, "a", 7, tmp_path) is not None
    assert j.usable(0, ident, "a", 8, tmp_path) is None                       # another image id
    assert j.usable(0, ident, "a-2", 7, tmp_path) is None                     # another stem
    assert j.usable(1, ident, "a", 7, tmp_path) is None                       # another input position
    image.write_bytes(b"12345")                                                 # the input changed
    assert j.usable(0, input_identity(image), "a", 7, tmp_path) is None
    os.unlink(tmp_path / "a_overlay.png")                                       # an output is gone
    assert j.usable(0, ident, "a", 7, tmp_path) is None
    j.finish()
    assert not (tmp_path / JOURNAL_NAME).exists()
