"""Export the student for serving: safetensors, all-zero embedding rows pruned.

The file holds the dense weights (``dense.*``) and, per table, the weights of the fallback row
followed by the kept rows (``table.<name>.weight``). The JSON metadata holds the config and,
per table, the kept ids (row ``i + 1`` is ``ids[i]``) and the ids whose rows were all zero and
were dropped (``zero_ids``). The loader maps zero ids to a zero row (not to the fallback row),
so the loaded model scores exactly like the live one. Loading never unpickles.

>>> from models.learner import StudentLearner
>>> from models.synthetic import SyntheticRequests
>>> from models.two_tower import TwoTowerConfig
>>> learner = StudentLearner(TwoTowerConfig(embedding_dim=4, hidden_sizes=(8, 8), output_dim=8, min_count=1))
>>> samples = SyntheticRequests(seed=0).batch(8)
>>> _ = learner.learn_many(samples)
>>> served = ServedStudent.from_bytes(export_bytes(learner))     # = load_student_bytes(...)
>>> user, items = samples[0].user, samples[0].items
>>> bool(np.array_equal(served.score(user, items), learner.score(user, items)))
True
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from models.checkpoint import dumps
from models.embedding import EmbeddingTable
from models.exceptions import ExportError
from models.id_map import DynamicIdMap
from models.learner import _read_metadata
from models.served import ServedStudent
from models.two_tower import TwoTowerConfig, TwoTowerStudent

EXPORT_FORMAT = "prerank.two_tower_export/1"


def _student_of(model: Any) -> TwoTowerStudent:
    student = getattr(model, "student", model)
    if not isinstance(student, TwoTowerStudent):
        raise ExportError(f"cannot export {type(model).__name__}: not a student or a student learner")
    return student


def export_bytes(model: Any, prune: bool = True) -> bytes:
    """Serialise a :class:`TwoTowerStudent` (or a learner or served model holding one) for serving.

    With ``prune=True`` all-zero admitted rows are dropped and their ids listed in ``zero_ids``.
    """
    student = _student_of(model)
    tensors: dict[str, torch.Tensor] = {
        f"dense.{name}": value.detach().contiguous() for name, value in student.state_dict().items()
    }
    tables_meta: dict[str, dict[str, list[str]]] = {}
    for name, table in student.tables.items():
        ids = [raw_id for raw_id, _ in table.id_map.items()]
        rows, is_zero = table.zero_rows_mask()
        keep = ~is_zero if prune else np.ones_like(is_zero)
        kept_rows = torch.from_numpy(rows[keep])
        weight = torch.cat([table.weight[:1], table.weight.index_select(0, kept_rows)])
        tensors[f"table.{name}.weight"] = weight.contiguous()
        tables_meta[name] = {
            "ids": [raw_id for raw_id, k in zip(ids, keep) if k],
            "zero_ids": [raw_id for raw_id, k in zip(ids, keep) if not k],
        }
    metadata = {
        "format": EXPORT_FORMAT,
        "config": dumps(student.config.to_dict()),
        "tables": dumps(tables_meta),
    }
    return safetensors.torch.save(tensors, metadata=metadata)


def load_student_bytes(data: bytes) -> ServedStudent:
    """The served model of an export: :meth:`ServedStudent.from_bytes` (``user_vector``, ``score``...)."""
    return ServedStudent(student_module_from_bytes(data))


def student_module_from_bytes(data: bytes) -> TwoTowerStudent:
    """The :class:`TwoTowerStudent` module of an export (eval mode; frozen id maps, no TTL).

    Raises :class:`~models.exceptions.ExportError` on anything but a well-formed export.
    """
    metadata = _read_metadata(data, EXPORT_FORMAT)
    try:
        tensors = safetensors.torch.load(data)
        config = TwoTowerConfig.from_dict(json.loads(metadata["config"]))
        tables_meta = json.loads(metadata["tables"])
    except (KeyError, ValueError, TypeError) as error:
        raise ExportError(f"malformed export: {error}") from error
    tables = {}
    for name, info in tables_meta.items():
        weight = tensors[f"table.{name}.weight"]
        n_kept = len(info["ids"])
        if weight.shape != (n_kept + 1, config.embedding_dim):
            raise ExportError(f"table {name!r}: {tuple(weight.shape)} rows for {n_kept} ids")
        zero_row = n_kept + 1
        rows_by_id = dict(zip(info["ids"], range(1, zero_row)))
        rows_by_id.update(dict.fromkeys(info["zero_ids"], zero_row))
        table = EmbeddingTable(config.embedding_dim, DynamicIdMap.frozen(rows_by_id, zero_row + 1), ttl=None)
        table.weight = torch.cat([weight, torch.zeros(1, config.embedding_dim)])
        tables[name] = table
    with torch.device("meta"):
        student = TwoTowerStudent(config, tables=tables)
    dense = {k[len("dense."):]: v for k, v in tensors.items() if k.startswith("dense.")}
    try:
        student.load_state_dict(dense, assign=True)
    except RuntimeError as error:
        raise ExportError(f"dense weights do not match the config: {error}") from error
    student.eval()
    return student


def export_file(model: Any, path: str | PathLike[str], prune: bool = True) -> int:
    """Write :func:`export_bytes` to ``path``; returns the number of bytes written."""
    data = export_bytes(model, prune=prune)
    Path(path).write_bytes(data)
    return len(data)


def load_student_file(path: str | PathLike[str]) -> ServedStudent:
    return load_student_bytes(Path(path).read_bytes())


def size_report(model: Any) -> dict[str, float]:
    """Export sizes without and with pruning of all-zero rows.

    Keys: ``bytes_before``, ``bytes_after``, ``reduction`` (1 - after / before), ``rows_before``,
    ``rows_after`` (admitted embedding rows written) and ``zero_row_ratio``.
    """
    student = _student_of(model)
    before, after = len(export_bytes(student, prune=False)), len(export_bytes(student, prune=True))
    rows_before = sum(len(t.id_map) for t in student.tables.values())
    zeros = sum(int(t.zero_rows_mask()[1].sum()) for t in student.tables.values())
    return {
        "bytes_before": float(before),
        "bytes_after": float(after),
        "reduction": 1.0 - after / before,
        "rows_before": float(rows_before),
        "rows_after": float(rows_before - zeros),
        "zero_row_ratio": student.zero_row_ratio(),
    }
