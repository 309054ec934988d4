"""Model state and consumed offsets saved together, so a restart neither loses nor repeats.

A checkpoint is a folder ``ckpt-{seq}`` holding the learner's own files and ``offsets.json``
(the next offset to read per partition, plus counters). The file ``LATEST`` names the newest
complete folder and is replaced atomically (write + ``os.replace``) only after the folder is
fully written, so a crash mid-save leaves the previous checkpoint in force.

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
        _fsync_dir(folder)
        tmp = self.root / "LATEST.tmp"
        tmp.write_text(folder.name)
        os.replace(tmp, self.root / "LATEST")
        self._prune()
        return folder

    def _prune(self) -> None:
        folders = sorted(self.root.glob("ckpt-*"))
        for old in folders[: max(0, len(folders) - self.keep)]:
            shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
