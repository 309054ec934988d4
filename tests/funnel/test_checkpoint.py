"""The trainer's checkpoint directory (``funnel.checkpoint``): save, latest, prune, crashes mid-save
and the order of fsyncs against the flip of ``LATEST``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import funnel.checkpoint as checkpoint_module
from funnel.checkpoint import CheckpointDir


def model_writer(text: str, extra: dict[str, str] | None = None):
    def write(folder: Path) -> None:
        (folder / "model.bin").write_text(text)
        for name, content in (extra or {}).items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(content)
    return write


def test_empty_directory_has_no_checkpoint(tmp_path):
    assert CheckpointDir(tmp_path / "none").latest() is None
    assert not (tmp_path / "none").exists()  # looking does not create anything


def test_save_then_latest_returns_what_was_saved(tmp_path):
    store = CheckpointDir(tmp_path, keep=3)
    for n in range(1, 4):
        folder = store.save(model_writer(f"model {n}"), {"0": 10 * n, "1": n}, {"records": n})
        latest = store.latest()
        assert latest.folder == folder == tmp_path / f"ckpt-{n:08d}"
        assert (latest.offsets, latest.counters) == ({"0": 10 * n, "1": n}, {"records": n})
        assert (latest.folder / "model.bin").read_text() == f"model {n}"
    # a fresh instance over the same root (a restarted trainer) sees the same newest checkpoint
    again = CheckpointDir(tmp_path, keep=3).latest()
    assert again.folder.name == "ckpt-00000003" and again.offsets == {"0": 30, "1": 3}
    assert not (tmp_path / "LATEST.tmp").exists()


def test_prune_keeps_the_newest(tmp_path):
    store = CheckpointDir(tmp_path, keep=2)
    for n in range(1, 6):
        store.save(model_writer(f"model {n}"), {"0": n}, {})
        kept = sorted(p.name for p in tmp_path.glob("ckpt-*"))
        assert kept == [f"ckpt-{k:08d}" for k in range(max(1, n - 1), n + 1)]
        assert store.latest().offsets == {"0": n}


def test_a_crash_while_writing_the_model_leaves_the_previous_checkpoint(tmp_path):
    store = CheckpointDir(tmp_path, keep=3)
    store.save(model_writer("good"), {"0": 5}, {"records": 5})

    def crash(folder: Path) -> None:
        (folder / "model.bin").write_text("half")
        (folder / "stale-part").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.save(crash, {"0": 9}, {"records": 9})
    assert (tmp_path / "ckpt-00000002").exists()  # the half-written folder is there ...
    latest = CheckpointDir(tmp_path).latest()  # ... and ignored, also after a restart
    assert latest.folder.name == "ckpt-00000001" and latest.offsets == {"0": 5}
    assert (latest.folder / "model.bin").read_text() == "good"

    # the next save replaces the half-written folder wholly: nothing of the crashed attempt is left
    folder = store.save(model_writer("better"), {"0": 9}, {"records": 9})
    assert folder.name == "ckpt-00000002"
    assert sorted(p.name for p in folder.iterdir()) == ["model.bin", "offsets.json"]
    assert store.latest().offsets == {"0": 9} and (folder / "model.bin").read_text() == "better"


def test_a_crash_before_the_flip_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    store = CheckpointDir(tmp_path, keep=1)
    store.save(model_writer("good"), {"0": 5}, {})

    def no_rename(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(checkpoint_module.os, "replace", no_rename)
    with pytest.raises(OSError, match="killed"):
        store.save(model_writer("new"), {"0": 9}, {})
    monkeypatch.undo()
    # the new folder is complete but not named by LATEST; the old one was not pruned
    assert (tmp_path / "ckpt-00000002" / "offsets.json").exists()
    latest = CheckpointDir(tmp_path, keep=1).latest()
    assert latest.folder.name == "ckpt-00000001" and latest.offsets == {"0": 5}
    assert (latest.folder / "model.bin").read_text() == "good"


def test_fsyncs_come_before_the_flip_and_the_flip_before_pruning(tmp_path, monkeypatch):
    """Recorded order of fsyncs, the rename of LATEST and deletions, for one save that prunes."""
    store = CheckpointDir(tmp_path, keep=1)
    store.save(model_writer("first"), {"0": 1}, {})
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_rmtree = os.fsync, os.replace, checkpoint_module.shutil.rmtree

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        return real_replace(src, dst)

    def rmtree(path, *args, **kwargs):
        events.append(("rmtree", str(path)))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint_module.os, "replace", replace)
    monkeypatch.setattr(checkpoint_module.shutil, "rmtree", rmtree)
    folder = store.save(model_writer("second", {"tables/item.bin": "rows"}), {"0": 2}, {})
    monkeypatch.undo()

    root = str(tmp_path.resolve())
    flip = events.index(("replace", str(tmp_path / "LATEST")))
    before = {path for kind, path in events[:flip] if kind == "fsync"}
    after = [event for event in events[flip + 1:]]
    new = folder.resolve()
    # every file and sub-folder of the new checkpoint, the folder itself and the pointer's content
    written = {str(p) for p in new.rglob("*")} | {str(new), f"{root}/LATEST.tmp"}
    assert written <= before, written - before
    assert {str(new / "model.bin"), str(new / "offsets.json"), str(new / "tables" / "item.bin")} <= before
    # the root is fsynced after the rename (the flip is durable), and only then is the old folder pruned
    assert after[0] == ("fsync", root)
    assert after[1:] == [("rmtree", str(tmp_path / "ckpt-00000001"))]
    assert json.loads((folder / "offsets.json").read_text())["offsets"] == {"0": 2}
    assert store.latest().folder == folder
