"""Safetensors helpers shared by checkpoints and exports: tables, schedules, JSON metadata.

Everything is tensors plus JSON strings in the safetensors metadata; nothing is pickled.

>>> schedule_from_dict(schedule_to_dict(LinearLambda(end=2.0, steps=5)))
LinearLambda(start=0.0, end=2.0, steps=5)
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import torch

from models.embedding import EmbeddingTable
from models.exceptions import ConfigError
from models.id_map import DynamicIdMap
from models.losses import SCHEDULES, LambdaSchedule, LinearLambda  # noqa: F401 (doctest)


def schedule_to_dict(schedule: LambdaSchedule) -> dict[str, Any]:
    for kind, cls in SCHEDULES.items():
        if type(schedule) is cls:
            return {"kind": kind, **dataclasses.asdict(schedule)}
    raise ConfigError(f"cannot save a custom lambda schedule {type(schedule).__name__}")


def schedule_from_dict(values: dict[str, Any]) -> LambdaSchedule:
    values = dict(values)
    kind = values.pop("kind")
    if kind not in SCHEDULES:
        raise ConfigError(f"unknown lambda schedule {kind!r}")
    return SCHEDULES[kind](**values)


def tables_to_tensors(
    tables: dict[str, EmbeddingTable], prefix: str = "table"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Full table state (weights, slots, last-seen times) and the id maps' JSON state."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for name, table in tables.items():
        id_meta, last_seen = table.id_map.state()
        n_rows = table.id_map.n_rows
        tensors[f"{prefix}.{name}.weight"] = table.weight[:n_rows].contiguous()
        for slot, value in table.slots.items():
            tensors[f"{prefix}.{name}.slot.{slot}"] = value[:n_rows].contiguous()
        tensors[f"{prefix}.{name}.last_seen"] = torch.from_numpy(last_seen)
        meta[name] = {"id_map": id_meta, "ttl": table.ttl, "dim": table.dim, "slots": sorted(table.slots)}
    return tensors, meta


def tables_from_tensors(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str = "table"
) -> dict[str, EmbeddingTable]:
    tables = {}
    for name, info in meta.items():
        last_seen = tensors[f"{prefix}.{name}.last_seen"].numpy().astype(np.int64)
        id_map = DynamicIdMap.from_state(info["id_map"], last_seen)
        table = EmbeddingTable(int(info["dim"]), id_map, info["ttl"])
        weight = tensors[f"{prefix}.{name}.weight"]
        table.weight = torch.zeros(max(16, weight.shape[0]), table.dim)
        table.weight[: weight.shape[0]] = weight
        for slot in info["slots"]:
            value = tensors[f"{prefix}.{name}.slot.{slot}"]
            table.slot(slot)[: value.shape[0]] = value
        tables[name] = table
    return tables


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def dense_to_tensors(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Module weights (``dense.*``) and per-parameter optimiser state (``optim.<param>.<key>``)."""
    tensors = {f"dense.{name}": value.detach().contiguous() for name, value in module.state_dict().items()}
    for name, parameter in module.named_parameters():
        for key, value in optimizer.state.get(parameter, {}).items():
            tensors[f"optim.{name}.{key}"] = torch.as_tensor(value).reshape(-1).contiguous()
    return tensors


def dense_from_tensors(
    module: torch.nn.Module, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]
) -> None:
    """Inverse of :func:`dense_to_tensors` (the optimiser must be built over ``module``)."""
    module.load_state_dict({k[len("dense."):]: v for k, v in tensors.items() if k.startswith("dense.")})
    for name, parameter in module.named_parameters():
        prefix = f"optim.{name}."
        state = {
            key[len(prefix):]: value.reshape(()) if value.numel() == 1 and key.endswith(".step") else value.reshape(parameter.shape)
            for key, value in tensors.items() if key.startswith(prefix)
        }
        if state:
            optimizer.state[parameter] = state
