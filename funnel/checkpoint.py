"""Model state and consumed offsets saved together, so a restart neither loses nor repeats.

A checkpoint is a folder ``ckpt-{seq}`` holding the learner's own files and ``offsets.json``
(the next offset to read per partition, plus counters). The file ``LATEST`` names the newest
complete folder and is replaced atomically (write, fsync, ``os.replace``, fsync of the root) only
after the folder's files and the folder are fsynced, so a crash mid-save leaves the previous
checkpoint in force; old folders are pruned only after the flip is durable.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> store = CheckpointDir(root, keep=2)
>>> store.latest() is None
True
>>> folder = store.save(lambda path: (path / "model.json").write_text("{}"), {"0": 12}, {"records": 3})
>>> store.latest().offsets, store.latest().counters
({'0': 12}, {'records': 3})
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Checkpoint:
    folder: Path
    offsets: dict[str, int]
    counters: dict[str, int]


class CheckpointDir:
    def __init__(self, root: Path, keep: int = 3) -> None:
        self.root = Path(root)
        self.keep = keep

    def latest(self) -> Checkpoint | None:
        pointer = self.root / "LATEST"
        if not pointer.exists():
            return None
        folder = self.root / pointer.read_text().strip()
        state = json.loads((folder / "offsets.json").read_text())
        return Checkpoint(folder, state["offsets"], state["counters"])

    def at_step(self, step: int) -> Checkpoint | None:
        """The kept checkpoint whose counters name group step ``step`` (a trainer group's resume point)."""
        for folder in sorted(self.root.glob("ckpt-*"), reverse=True):
            offsets = folder / "offsets.json"
            if not offsets.exists():
                continue  # a folder being written when the process died
            state = json.loads(offsets.read_text())
            if state["counters"].get("step") == step:
                return Checkpoint(folder, state["offsets"], state["counters"])
        return None

    def save(
        self, write_model: Callable[[Path], None], offsets: dict[str, int], counters: dict[str, int]
    ) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        previous = self.latest()
        seq = int(previous.folder.name.split("-")[1]) + 1 if previous else 1
        folder = self.root / f"ckpt-{seq:08d}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        write_model(folder)
        (folder / "offsets.json").write_text(json.dumps({"offsets": offsets, "counters": counters}))
        _fsync_tree(folder)  # the folder's files and their names are on disk before LATEST names it
        tmp = self.root / "LATEST.tmp"
        tmp.write_text(folder.name)
        fsync_path(tmp)  # else a crash can leave LATEST renamed but empty
        os.replace(tmp, self.root / "LATEST")
        fsync_path(self.root)  # the flip is on disk before pruning deletes the folder it replaced
        self._prune()
        return folder

    def _prune(self) -> None:
        folders = sorted(self.root.glob("ckpt-*"))
        for old in folders[: max(0, len(folders) - self.keep)]:
            shutil.rmtree(old, ignore_errors=True)


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Every file and sub-folder under ``folder``, then ``folder`` itself."""
    for path in sorted(folder.rglob("*"), reverse=True):  # children before their folder
        fsync_path(path)
    fsync_path(folder)
