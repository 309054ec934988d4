"""Loaders: layouts, malformed rows counted not fatal, ordering, and the real KuaiRand slice."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from replay.dataset import Dataset
from replay.exceptions import DatasetLayoutError
from replay.generic import GenericLayout, load_generic
from replay.kuairand import load_kuairand
from replay.load import load_dataset
from replay.synthetic import SyntheticConfig, SyntheticDataWarning, generate

KUAIRAND = Path("/work/shared/data/kuairand-pure")
LOG_HEADER = (
    "user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate,"
    "long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,is_profile_enter,is_rand,tab"
)


def log_row(user, video, ts, click=1, like=0, long_view=0, tab=1) -> str:
    return f"{user},{video},20220425,0,{ts},{click},{like},0,0,0,0,{long_view},500,9000,0,0,0,0,{tab}"


@pytest.fixture
def kuairand_folder(tmp_path: Path) -> Path:
    (tmp_path / "log_standard_b.csv").write_text(
        "\n".join([LOG_HEADER, log_row(1, 10, 3000), log_row(2, 99, 1000, long_view=1), log_row(1, 10, 3000)]) + "\n"
    )
    (tmp_path / "log_standard_a.csv").write_text(
        "\n".join([
            LOG_HEADER,
            log_row(1, 11, 2000),
            "1,12,20220425,0",  # wrong field count
            log_row("x", 11, 2500),  # bad id
            log_row(1, 11, 2600, click=7),  # not a 0/1 label
            log_row(3, 10, -5),  # negative time
        ]) + "\n"
    )
    (tmp_path / "video_features_basic_pure.csv").write_text(
        "video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,server_width,"
        "server_height,music_id,music_type,tag\n"
        '10,77,NORMAL,2022-04-10,X,0.0,87433.0,720.0,1280.0,1,9.0,"3,4"\n'
        "11,78,NORMAL,2022-04-10,X,0.0,,720.0,1280.0,1,9.0,\n"
    )
    (tmp_path / "user_features_pure.csv").write_text(
        'user_id,user_active_degree,follow_user_num_range\n1,full_active,"[10,100)"\n2,high_active,0\n'
    )
    (tmp_path / "user_history_before_4_25.csv").write_text(
        "user_id,history_len,last_time_ms,watch_seq,like_seq,long_watch_seq\n1,2,500,10 11,,\n"
    )
    return tmp_path


def test_kuairand_layout(kuairand_folder: Path):
    data = load_kuairand(kuairand_folder)
    assert [(e.user_id, e.item_id, e.ts_ms) for e in data.exposures] == [
        ("2", "99", 1000), ("1", "11", 2000), ("1", "10", 3000), ("1", "10", 3000),  # repeats kept
    ]
    assert data.exposures[0].long_view == 1 and data.exposures[0].tab == 1
    assert data.catalog["10"].author_id == "77" and data.catalog["10"].tags == ("3", "4")
    assert data.catalog["10"].duration_ms == 87433 and data.catalog["11"].duration_ms == 0
    assert data.catalog["99"].author_id == ""  # exposed but absent from the feature table
    assert data.profiles["1"] == {"user_active_degree": "full_active", "follow_user_num_range": "[10,100)"}
    assert data.history_seeds["1"].item_ids == ("10", "11") and data.history_seeds["1"].last_ts_ms == 500
    assert data.report.skipped == {"log_standard_a.csv": {"wrong field count": 1, "bad value": 3}}
    assert data.report.total_skipped() == 4
    assert any("no feature row" in note for note in data.report.notes)


def test_kuairand_folder_without_logs_is_a_layout_error(tmp_path: Path):
    with pytest.raises(DatasetLayoutError):
        load_kuairand(tmp_path)


def test_generic_layout(tmp_path: Path):
    path = tmp_path / "mine.csv"
    path.write_text(
        "uid,iid,when,clicked,creator,labels,watched\n"
        "u1,i1,20,1,c1,a;b,1\n"
        "u1,i2,10,0,c2,,0\n"
        "u2,i1,15,0,c1,a;b\n"  # wrong field count
        "u2,,16,0,c1,a,0\n"  # empty item id
    )
    layout = GenericLayout(user="uid", item="iid", timestamp="when", timestamp_unit="s", click="clicked",
                           long_view="watched", author="creator", tags="labels", tag_separator=";")
    data = load_generic(path, layout)
    assert [(e.item_id, e.ts_ms, e.click, e.long_view, e.like) for e in data.exposures] == [
        ("i2", 10_000, 0, 0, 0), ("i1", 20_000, 1, 1, 0),
    ]
    assert data.catalog["i1"].author_id == "c1" and data.catalog["i1"].tags == ("a", "b")
    assert data.report.total_skipped() == 2


def test_generic_layout_errors(tmp_path: Path):
    path = tmp_path / "x.csv"
    path.write_text("user_id,item_id,timestamp\nu,i,1\n")
    with pytest.raises(DatasetLayoutError, match="feedback"):
        load_generic(path)
    path.write_text("user_id,timestamp,click\nu,1,0\n")
    with pytest.raises(DatasetLayoutError, match="item_id"):
        load_generic(path)
    with pytest.raises(DatasetLayoutError):
        GenericLayout(timestamp_unit="minutes")


def test_load_dataset_dispatch(kuairand_folder: Path, tmp_path: Path):
    assert len(load_dataset(kuairand_folder).exposures) == 4
    with pytest.raises(DatasetLayoutError):
        load_dataset(tmp_path / "missing")
    with pytest.warns(SyntheticDataWarning):
        data = load_dataset(None, synthetic=SyntheticConfig(n_users=30, n_items=80))
    assert data.report.synthetic


def test_synthetic_is_deterministic_and_consistent():
    config = SyntheticConfig(n_users=60, n_items=150, n_authors=20, n_tags=10, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntheticDataWarning)
        first, second = generate(config), generate(config)
    assert first.exposures == second.exposures
    assert all(a.ts_ms <= b.ts_ms for a, b in zip(first.exposures, first.exposures[1:]))
    assert {e.item_id for e in first.exposures} <= set(first.catalog)
    assert all(e.long_view in (0, 1) and e.like <= e.click for e in first.exposures)
    assert set(first.history_seeds) == {str(u) for u in range(60)}


@pytest.fixture(scope="module")
def kuairand() -> Dataset:
    if not KUAIRAND.exists():
        pytest.skip("KuaiRand-Pure slice not present")
    return load_kuairand(KUAIRAND)


def test_real_slice_matches_its_readme(kuairand: Dataset):
    # numbers from the data README, measured independently of this loader
    assert len(kuairand.exposures) == 185_177
    assert len({e.user_id for e in kuairand.exposures}) == 24_451
    assert len({e.item_id for e in kuairand.exposures}) == 6_153
    assert len(kuairand.catalog) == 7_583
    assert len(kuairand.profiles) == 27_285
    assert len(kuairand.history_seeds) == 26_469
    assert kuairand.report.total_skipped() == 0
    clicks = sum(e.click for e in kuairand.exposures) / len(kuairand.exposures)
    assert clicks == pytest.approx(0.442, abs=0.001)
    assert all(a.ts_ms <= b.ts_ms for a, b in zip(kuairand.exposures, kuairand.exposures[1:]))
