"""Export round trip, pruning of all-zero rows, computed sizes, size report and malformed files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.exceptions import ExportError
from models.export import (
    export_bytes,
    export_size,
    size_report,
)
from models.features import ItemFeatures, RequestSample, UserFeatures
from models.ftrl import FTRLConfig
from models.learner import StudentLearner
from models.served import ServedStudent
from models.synthetic import SyntheticRequests
from models.two_tower import TwoTowerConfig


@pytest.fixture
def trained(small_config, stream):
    learner = StudentLearner(small_config, ftrl=FTRLConfig(l1=1.0))
    for _ in range(6):
        learner.learn_many(stream.batch(16))
    return learner


def _requests(stream, n=5):
    return [(s.user, list(s.items)) for s in stream.batch(n)] + [
        (UserFeatures("unseen-user", history_items=("nope",)), [ItemFeatures("unseen", "a-new", ("t-new",))]),
    ]


@pytest.mark.parametrize("prune", [True, False])
def test_loaded_model_scores_exactly_like_the_live_model(trained, stream, prune):
    served = ServedStudent.from_bytes(export_bytes(trained, prune=prune))
    for user, items in _requests(stream):
        np.testing.assert_array_equal(served.score(user, items), trained.score(user, items))
        np.testing.assert_array_equal(served.item_vectors(items), trained.served.item_vectors(items))


def test_pruned_ids_read_a_zero_row_not_the_fallback_row(trained):
    item_table = trained.student.tables["item"]
    rows, is_zero = item_table.zero_rows_mask()
    assert is_zero.any(), "the fixture must leave some zero rows"
    item_table.weight[0] = 1.0  # make the fallback row distinguishable from a zero row
    zero_id = [raw for raw, _ in item_table.id_map.items()][int(np.flatnonzero(is_zero)[0])]
    served = ServedStudent.from_bytes(export_bytes(trained))
    assert torch.count_nonzero(served.tables["item"].weight[served.tables["item"].id_map.row(zero_id)]) == 0
    items = [ItemFeatures(zero_id), ItemFeatures("never-seen")]
    np.testing.assert_array_equal(served.item_vectors(items), trained.served.item_vectors(items))


def test_size_report_counts_the_dropped_rows(trained):
    report = size_report(trained)
    rows_total = sum(len(t.id_map) for t in trained.student.tables.values())
    zero_rows = sum(int(t.zero_rows_mask()[1].sum()) for t in trained.student.tables.values())
    assert report["rows_before"] == rows_total and report["rows_after"] == rows_total - zero_rows
    assert report["bytes_before"] - report["bytes_after"] >= zero_rows * trained.config.embedding_dim * 4
    assert report["reduction"] == pytest.approx(1 - report["bytes_after"] / report["bytes_before"])


def _odd_ids_sample() -> RequestSample:
    """Ids the header's JSON must escape or encode: quotes, backslashes, control and non-ASCII characters."""
    items = (ItemFeatures('i"quote', "a\\back", ("t\u00e9", "t\n\x01"), 5), ItemFeatures("视频-🎬", "作者"))
    user = UserFeatures('u"\\', profile={"g": "é"}, history_items=("视频-🎬", 'i"quote'))
    return RequestSample("r", 10, user, items, cascade=(1, 0), click=(1, 0), long_view=(0, 0), like=(0, 0))


SIZES = {
    "tiny": TwoTowerConfig(embedding_dim=1, hidden_sizes=(), output_dim=1, min_count=1),
    "small": TwoTowerConfig(embedding_dim=4, hidden_sizes=(8, 8), output_dim=8, min_count=1),
    "wide": TwoTowerConfig(embedding_dim=24, hidden_sizes=(64, 48), output_dim=32, min_count=2),
}


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("n_batches", [0, 1, 6])
def test_computed_export_size_equals_the_serialised_length(size, n_batches):
    """``n_batches=0`` is a fresh model (every table empty); ``min_count=2`` leaves some tables
    empty after one batch; l1 makes pruned and kept rows; the odd ids exercise the JSON escaping."""
    learner = StudentLearner(SIZES[size], ftrl=FTRLConfig(l1=1.0))
    stream = SyntheticRequests(seed=5, n_users=60, n_items=150, items_per_request=6)
    for k in range(n_batches):
        learner.learn_many(stream.batch(12) + ([_odd_ids_sample()] if k % 2 == 0 else []))
    if n_batches == 0:
        assert all(len(t.id_map) == 0 for t in learner.student.tables.values())
    for prune in (False, True):
        data = export_bytes(learner, prune=prune)
        assert export_size(learner, prune=prune) == len(data), prune
        assert export_size(ServedStudent.from_bytes(data), prune=prune) == len(export_bytes(ServedStudent.from_bytes(data), prune=prune))
    report = size_report(learner)
    assert report["bytes_before"] == len(export_bytes(learner, prune=False))
    assert report["bytes_after"] == len(export_bytes(learner, prune=True))


def test_file_variants(trained, tmp_path, stream):
    (tmp_path / "model.safetensors").write_bytes(export_bytes(trained))
    served = ServedStudent.from_file(tmp_path / "model.safetensors")
    user, items = _requests(stream, 1)[0]
    np.testing.assert_array_equal(served.score(user, items), trained.score(user, items))


@pytest.mark.parametrize("data", [b"", b"\x00" * 16, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxxxx"])
def test_malformed_bytes_raise_export_error(data):
    with pytest.raises(ExportError):
        ServedStudent.from_bytes(data)


def test_checkpoint_is_not_an_export(trained):
    with pytest.raises(ExportError):
        ServedStudent.from_bytes(trained.to_bytes())


def test_exporting_something_else_raises():
    with pytest.raises(ExportError):
        export_bytes(object())
