"""The journal of a `segment` run: each image's results recorded in the output folder as soon as its pictures are
written, so that a killed run keeps them and `segment --resume` finishes it.

The file, OUTDIR/.minimaskrcnn-journal.jsonl, is JSON lines: a header {"journal": ..., "version": 1, "settings":
{...}} with what decides the outputs (weights, thresholds, classes, output options, package version), then one record
per finished image: its input (resolved path, size, mtime), output stem, COCO image id, the files written (names in
OUTDIR), its COCO results entries (with --json) and its label names. A record is appended, flushed and fsync'd after
the image's pictures are in place (each written atomically, `minimaskrcnn.atomic`), so a record's presence means
those files are complete. A killed run can leave at most a torn last line; reading skips it. This holds for a killed
process (the files are in the page cache); after a power cut a record can outlive its pictures' data, which are
renamed into place but not fsync'd (an fsync per picture would cost more than the journal's one per image).

Resuming keeps a record when the same input (same resolved path, size and mtime) gets the same stem and image id
again and its files are all there; every other image is run again. The final results JSON is then assembled in input
order from the kept and the new records, equal to what an uninterrupted run writes: JSON floats round-trip exactly
(Python writes the shortest repr that reads back as the same double).

A run that reaches its end removes its journal once the results JSON is written, failed images or not (they failed
on their input, and would again); only a killed or interrupted run leaves one, for `--resume`.
"""
from __future__ import annotations

import json
import os

from minimaskrcnn.atomic import atomic_path

__all__ = ["JOURNAL_NAME", "JournalMismatch", "Journal", "input_identity"]

JOURNAL_NAME = ".minimaskrcnn-journal.jsonl"
KIND = "minimaskrcnn segment"
VERSION = 1


class JournalMismatch(ValueError):
    """--resume over a journal written with other settings: the outputs would mix two runs."""


def input_identity(path) -> dict:
    """What identifies an input file between two runs: its resolved path, size and modification time."""
    st = os.stat(path)
    return {"input": os.path.realpath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read(path: str) -> tuple:
    """(header or None, [records]) of a journal file: complete lines only (a record is complete with its newline);
    an unparsable line ends the readable part."""
    header, records = None, []
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None, []
    for line in data.split(b"\n")[:-1]:                             # what follows the last newline is torn
        if not line:
            continue
        try:
            item = json.loads(line)
        except ValueError:                                           # torn by a kill mid-write: the rest is lost
            break
        if header is None:
            if not (isinstance(item, dict) and item.get("journal") == KIND and item.get("version") == VERSION):
                return None, []                                      # not ours, or another format version
            header = item
        elif isinstance(item, dict) and "index" in item:
            records.append(item)
    return header, records


class Journal:
    """`Journal.open(outdir, settings, resume)`, then `append(record)` per image, `finish()` at the end.

    `kept` maps input index -> record of an earlier run that `--resume` reuses (see `usable`)."""

    def __init__(self, path: str, settings: dict, kept: list, resumed: bool = False):
        self.path, self.settings, self.resumed = path, settings, resumed
        self.kept = {r["index"]: r for r in kept}
        self._file = open(path, "ab")

    @classmethod
    def open(cls, outdir, settings: dict, resume: bool) -> "Journal":
        """Start a journal in `outdir`: with `resume`, over the records of an earlier run with the same settings
        (JournalMismatch if its settings differ), otherwise afresh. The file is rewritten atomically with the header
        and the records it keeps, so a torn last line is never appended to."""
        path = os.path.join(os.fspath(outdir), JOURNAL_NAME)
        settings = json.loads(json.dumps(settings))                  # as it reads back: tuples are lists in JSON
        header, records = _read(path) if resume else (None, [])
        if header is not None and header["settings"] != settings:
            differ = sorted(k for k in set(settings) | set(header["settings"])
                            if settings.get(k) != header["settings"].get(k))
            raise JournalMismatch(f"{outdir}: the interrupted run there used other settings ({', '.join(differ)}); "
                                  f"rerun it with the same options, or without --resume to start over")
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            for item in [{"journal": KIND, "version": VERSION, "settings": settings}, *records]:
                f.write(_line(item))
            f.flush()
            os.fsync(f.fileno())
        return cls(path, settings, records, resumed=header is not None)

    def usable(self, index: int, identity: dict, stem: str, image_id: int, outdir) -> dict | None:
        """The earlier record of input `index` if it is still valid: same input file, stem and id, files present."""
        r = self.kept.get(index)
        if r is None or r.get("stem") != stem or r.get("image_id") != image_id:
            return None
        if any(r.get(k) != v for k, v in identity.items()):
            return None
        if not all(os.path.isfile(os.path.join(os.fspath(outdir), name)) for name in r.get("files", ())):
            return None
        return r

    def append(self, record: dict) -> None:
        """Record one finished image: one line, flushed and fsync'd before returning."""
        self._file.write(_line(record))
        self._file.flush()
        os.fsync(self._file.fileno())

    def finish(self) -> None:
        """Close and remove the file: the run reached its end."""
        self._file.close()
        os.unlink(self.path)

    def close(self) -> None:
        self._file.close()


def _line(item: dict) -> bytes:
    return (json.dumps(item, separators=(",", ":")) + "\n").encode("utf-8")
