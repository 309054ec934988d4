"""Export the student for serving: safetensors, all-zero embedding rows pruned.

The file holds the dense weights (``dense.*``) and, per table, the weights of the fallback row
followed by the kept rows (``table.<name>.weight``). The JSON metadata holds the config and,
per table, the kept ids (row ``i + 1`` is ``ids[i]``) and the ids whose rows were all zero and
were dropped (``zero_ids``). The loader maps zero ids to a zero row (not to the fallback row),
so the loaded model scores exactly like the live one. Loading never unpickles.

:func:`export_size` is the length of :func:`export_bytes` computed from the shapes and the header
safetensors writes, without serialising the weights (the trainer's unpruned size per version).

>>> from models.learner import StudentLearner
>>> from models.synthetic import SyntheticRequests
>>> from models.two_tower import TwoTowerConfig
>>> learner = StudentLearner(TwoTowerConfig(embedding_dim=4, hidden_sizes=(8, 8), output_dim=8, min_count=1))
>>> samples = SyntheticRequests(seed=0).batch(8)
>>> _ = learner.learn_many(samples)
>>> from models.served import ServedStudent
>>> served = ServedStudent.from_bytes(export_bytes(learner))
>>> user, items = samples[0].user, samples[0].items
>>> bool(np.array_equal(served.score(user, items), learner.score(user, items)))
True
>>> export_size(learner, prune=False) == len(export_bytes(learner, prune=False))
True
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors.torch
import torch

from models.checkpoint import dumps
from models.embedding import EmbeddingTable
from models.exceptions import ExportError
from models.id_map import DynamicIdMap
from models.learner import _read_metadata
from models.two_tower import TwoTowerConfig, TwoTowerStudent

EXPORT_FORMAT = "prerank.two_tower_export/1"


def _student_of(model: Any) -> TwoTowerStudent:
    student = getattr(model, "student", model)
    if not isinstance(student, TwoTowerStudent):
        raise ExportError(f"cannot export {type(model).__name__}: not a student or a student learner")
    return student


def _layout(student: TwoTowerStudent, prune: bool) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """An export short of its weights: per table the admitted rows written after the fallback row
    (int64 ``(k,)``, in id order), and the safetensors metadata."""
    kept: dict[str, np.ndarray] = {}
    tables_meta: dict[str, dict[str, list[str]]] = {}
    for name, table in student.tables.items():
        pairs = table.id_map.items()
        ids = [raw_id for raw_id, _ in pairs]
        if prune:
            rows, is_zero = table.zero_rows_mask()  # rows in the same (row) order as ``pairs``
            keep = ~is_zero
            kept[name] = rows[keep]
            tables_meta[name] = {
                "ids": [raw_id for raw_id, k in zip(ids, keep) if k],
                "zero_ids": [raw_id for raw_id, k in zip(ids, keep) if not k],
            }
        else:  # every admitted row: no scan for all-zero rows
            kept[name] = np.asarray([row for _, row in pairs], dtype=np.int64)
            tables_meta[name] = {"ids": ids, "zero_ids": []}
    metadata = {
        "format": EXPORT_FORMAT,
        "config": dumps(student.config.to_dict()),
        "tables": dumps(tables_meta),
    }
    return kept, metadata


def export_bytes(model: Any, prune: bool = True) -> bytes:
    """Serialise a :class:`TwoTowerStudent` (or a learner or served model holding one) for serving.

    With ``prune=True`` all-zero admitted rows are dropped and their ids listed in ``zero_ids``.
    """
    student = _student_of(model)
    kept, metadata = _layout(student, prune)
    tensors: dict[str, torch.Tensor] = {
        f"dense.{name}": value.detach().contiguous() for name, value in student.state_dict().items()
    }
    for name, rows in kept.items():
        table = student.tables[name]
        weight = torch.cat([table.weight[:1], table.weight.index_select(0, torch.from_numpy(rows))])
        tensors[f"table.{name}.weight"] = weight.contiguous()
    return safetensors.torch.save(tensors, metadata=metadata)


def export_size(model: Any, prune: bool = False) -> int:
    """``len(export_bytes(model, prune))``, computed without serialising (or copying) the weights.

    Costs the id lists' JSON (the header holds them) and, with ``prune=True``, one scan of each
    table for all-zero rows; the weights are read for their shapes only.
    """
    student = _student_of(model)
    kept, metadata = _layout(student, prune)
    shapes = {f"dense.{name}": (value.dtype, tuple(value.shape)) for name, value in student.state_dict().items()}
    for name, rows in kept.items():
        table = student.tables[name]
        shapes[f"table.{name}.weight"] = (table.weight.dtype, (len(rows) + 1, table.dim))
    return safetensors_size(shapes, metadata)


# safetensors' dtype names, and the order it writes tensors in: by dtype (this rank, descending),
# then by name. The data is packed in that order, which fixes each tensor's ``data_offsets``.
_SAFETENSORS_DTYPES: dict[torch.dtype, tuple[int, str]] = {
    torch.bool: (0, "BOOL"), torch.uint8: (1, "U8"), torch.int8: (2, "I8"), torch.int16: (3, "I16"),
    torch.float16: (4, "F16"), torch.bfloat16: (5, "BF16"), torch.int32: (6, "I32"),
    torch.float32: (7, "F32"), torch.float64: (8, "F64"), torch.int64: (9, "I64"),
}


def safetensors_size(
    shapes: Mapping[str, tuple[torch.dtype, tuple[int, ...]]], metadata: Mapping[str, str] | None = None
) -> int:
    """Bytes of ``safetensors.torch.save`` of tensors with these ``{name: (dtype, shape)}``.

    The file is an 8-byte header length, the JSON header (``__metadata__`` and per tensor its
    dtype, shape and data offsets; compact, padded with spaces to a multiple of 8 bytes) and the
    packed data.

    >>> tensors = {"b": torch.zeros(3, 2), "a": torch.zeros(()), "c": torch.zeros(0, 4, dtype=torch.int64)}
    >>> shapes = {name: (t.dtype, tuple(t.shape)) for name, t in tensors.items()}
    >>> safetensors_size(shapes, {"k": 'v"1'}) == len(safetensors.torch.save(tensors, metadata={"k": 'v"1'}))
    True
    """
    for dtype, _ in shapes.values():
        if dtype not in _SAFETENSORS_DTYPES:
            raise ExportError(f"no safetensors size for dtype {dtype}")
    header: dict[str, Any] = {} if metadata is None else {"__metadata__": dict(metadata)}
    offset = 0
    for name in sorted(shapes, key=lambda n: (-_SAFETENSORS_DTYPES[shapes[n][0]][0], n)):
        dtype, shape = shapes[name]
        n_bytes = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype][1], "shape": list(shape), "data_offsets": [offset, offset + n_bytes]}
        offset += n_bytes
    header_bytes = len(json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    return 8 + header_bytes + (-header_bytes) % 8 + offset


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


def size_report(model: Any) -> dict[str, float]:
    """Export sizes without and with pruning of all-zero rows (:func:`export_size`: nothing serialised).

    Keys: ``bytes_before``, ``bytes_after``, ``reduction`` (1 - after / before), ``rows_before``,
    ``rows_after`` (admitted embedding rows written), ``zero_row_ratio`` and ``embedding_share``
    (the share of the unpruned export that is not dense weights: rows and their ids, what pruning
    can cut).
    """
    student = _student_of(model)
    before, after = export_size(student, prune=False), export_size(student, prune=True)
    dense_bytes = sum(p.numel() * p.element_size() for p in student.parameters())
    rows_before = sum(len(t.id_map) for t in student.tables.values())
    zeros = sum(int(t.zero_rows_mask()[1].sum()) for t in student.tables.values())
    return {
        "bytes_before": float(before),
        "bytes_after": float(after),
        "reduction": 1.0 - after / before,
        "rows_before": float(rows_before),
        "rows_after": float(rows_before - zeros),
        "zero_row_ratio": student.zero_row_ratio(),
        "embedding_share": 1.0 - dense_bytes / before,
    }
