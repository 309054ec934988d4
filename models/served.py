"""The served student: the scoring path a scorer runs, apart from the trainable module.

:class:`~models.two_tower.TwoTowerStudent` is the ``nn.Module`` a learner trains (its
``forward`` gives pair logits). :class:`ServedStudent` is what a scorer holds: it reads a
student's weights and never learns or admits ids. A scorer runs :meth:`ServedStudent.user_vector`
once per request (numpy, on views of the weights), takes item vectors from a cache or from
:meth:`ServedStudent.item_vectors`, and combines them with :meth:`ServedStudent.logits_from_vectors`.

Built from a published version's export (:meth:`ServedStudent.from_bytes`) it is frozen; built over a live module
(``ServedStudent(student)``, as :attr:`models.learner.StudentLearner.served` does) it scores with
the module's current weights.

>>> from models.features import ItemFeatures, UserFeatures
>>> from models.two_tower import TwoTowerConfig, TwoTowerStudent
>>> served = ServedStudent(TwoTowerStudent(TwoTowerConfig(embedding_dim=4, hidden_sizes=(8, 8), output_dim=6)))
>>> user, items = UserFeatures("u1"), [ItemFeatures("i1"), ItemFeatures("i2", tags=("t",))]
>>> vectors = served.item_vectors(items)
>>> vectors.shape, bool(np.allclose(np.linalg.norm(vectors, axis=1), 1.0))
((2, 6), True)
>>> logits = served.logits_from_vectors(served.user_vector(user), vectors)
>>> bool(np.array_equal(logits, served.score(user, items)))
True
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.features import ItemFeatures, UserFeatures
from models.sparse import SparseLookup
from models.tokens import user_slots

if TYPE_CHECKING:
    from models.embedding import EmbeddingTable
    from models.two_tower import TwoTowerConfig, TwoTowerStudent


def _mean_rows(weight: np.ndarray, table: EmbeddingTable, id_lists: Sequence[Sequence[str]]) -> np.ndarray:
    """Mean of each id list's rows (zeros for an empty list): ``(len(id_lists), dim)``, one
    lookup and one segmented sum for the whole batch."""
    lengths = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
    out = np.zeros((len(id_lists), weight.shape[1]), dtype=np.float32)
    if not lengths.any():
        return out
    rows = table.lookup([raw for ids in id_lists for raw in ids], now=0, learn=False)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    filled = lengths > 0
    out[filled] = np.add.reduceat(weight[rows], starts[filled], axis=0) / lengths[filled, None]
    return out


class ServedStudent:
    """Read-only scoring with a :class:`~models.two_tower.TwoTowerStudent`'s weights.

    Parameters
    ----------
    student
        The module whose tables and towers are read (never written, no ids admitted).
    """

    def __init__(self, student: TwoTowerStudent) -> None:
        self.student = student

    @classmethod
    def from_bytes(cls, data: bytes) -> ServedStudent:
        """The model of an export (:func:`models.export.export_bytes`); loading never unpickles."""
        from models.export import student_module_from_bytes

        return cls(student_module_from_bytes(data))

    @classmethod
    def from_file(cls, path: str | PathLike[str]) -> ServedStudent:
        return cls.from_bytes(Path(path).read_bytes())

    @property
    def config(self) -> TwoTowerConfig:
        return self.student.config

    @property
    def tables(self) -> dict[str, EmbeddingTable]:
        return self.student.tables

    def user_vector(self, user: UserFeatures) -> np.ndarray:
        """The unit user vector, float32 shape ``(output_dim,)``."""
        return self.user_vectors([user])[0]

    def user_vectors(self, users: Sequence[UserFeatures]) -> np.ndarray:
        """Unit user vectors, float32 shape ``(len(users), output_dim)``."""
        return self.user_vectors_and_offsets(users)[0]

    def user_offsets(self, users: Sequence[UserFeatures]) -> np.ndarray:
        """Each user's own logit offset (zeros without a user-bias head): float32 ``(len(users),)``."""
        return self.user_vectors_and_offsets(users)[1]

    def user_vectors_and_offsets(self, users: Sequence[UserFeatures]) -> tuple[np.ndarray, np.ndarray]:
        """Unit user vectors, float32 ``(len(users), output_dim)``, and the users' logit offsets
        (float32 ``(len(users),)``, added to every item's logit of a request; zeros without a
        user-bias head).

        The scorer's path: the same slots, mean pooling and tower as
        :meth:`~models.two_tower.TwoTowerStudent.encode_users`, the pooling in numpy on views of
        the tables (one lookup per slot for the batch, no autograd). A batch reads the tower's
        weights (~3 MB) once for all its users.
        """
        tables = self.student.tables
        pooled = []
        for table_name, id_lists in user_slots(users).values():
            table = tables[table_name]
            pooled.append(_mean_rows(table.weight.detach().numpy(), table, id_lists))
        # The products run in torch (its thread setting): numpy's OpenBLAS threads a batch's
        # matrix product and spins a second thread on cores the worker shares.
        user_input = torch.from_numpy(np.concatenate(pooled, axis=1))
        layers = [layer for layer in self.student.user_tower if isinstance(layer, nn.Linear)]
        head = self.student.user_offset
        with torch.no_grad():
            hidden = user_input
            for index, layer in enumerate(layers):
                hidden = torch.addmm(layer.bias, hidden, layer.weight.t())
                if index < len(layers) - 1:
                    hidden.clamp_(min=0.0)
            offsets = (torch.addmm(head.bias, user_input, head.weight.t()).squeeze(1) if head is not None
                       else torch.zeros(len(users)))
            return F.normalize(hidden, dim=1, eps=1e-12).numpy(), offsets.numpy()

    def item_vectors(self, items: Sequence[ItemFeatures]) -> np.ndarray:
        """Unit item vectors, float32 shape ``(len(items), output_dim)``."""
        if not items:
            return np.zeros((0, self.student.config.output_dim), dtype=np.float32)
        with torch.no_grad():
            return self.student.encode_items(items, SparseLookup(self.student.tables, 0, learn=False)).numpy()

    def logits_from_vectors(self, user_vector: np.ndarray, item_vectors: np.ndarray,
                            user_offset: float = 0.0) -> np.ndarray:
        """``temperature * item_vectors @ user_vector + bias + user_offset``: float32 shape ``(n,)``
        (with an interaction head, its logit in place of the scaled cosine).

        ``user_vector`` is ``(output_dim,)``, ``item_vectors`` ``(n, output_dim)``, ``user_offset``
        the user's own offset (:meth:`user_offsets`; it moves every item alike). The product
        runs in torch (its thread setting), not numpy: numpy's multithreaded OpenBLAS was
        measured at ~15 ms instead of ~0.1 ms for 1000 x 512 on a busy 2-core box.
        """
        temperature, bias = self.scalars()
        items = torch.from_numpy(np.ascontiguousarray(item_vectors, dtype=np.float32))
        user = torch.from_numpy(np.ascontiguousarray(user_vector, dtype=np.float32))
        if items.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        head = self.student.interaction
        if head is not None:
            with torch.no_grad():
                return (head.score_items(user, items) + (bias + float(user_offset))).numpy()
        return (torch.mv(items, user) * temperature + (bias + float(user_offset))).numpy()

    def scalars(self) -> tuple[float, float]:
        """Current ``(temperature, bias)`` as Python floats."""
        return float(self.student.log_temperature.detach().exp()), float(self.student.bias.detach())

    def score(self, user: UserFeatures, items: Sequence[ItemFeatures]) -> np.ndarray:
        """Logits of ``items`` for ``user`` (float32 ``(n,)``), via the cached-vector path."""
        vectors, offsets = self.user_vectors_and_offsets([user])
        return self.logits_from_vectors(vectors[0], self.item_vectors(items), float(offsets[0]))
