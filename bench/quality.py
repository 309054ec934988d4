"""Quality of the pre-rankers in the offline funnel, side by side in one run, written as JSON.

Runs :class:`replay.offline.OfflineFunnel` over KuaiRand-Pure (or a generic CSV, or synthetic data
when ``--data`` is omitted) with one two-tower student per loss mode and, with ``--baselines``, the
article's baselines, and with ``--peers`` (on by default) the peers a user would pick, Vowpal Wabbit
and river LR-FTRL (:mod:`replay.peers`), on the same exposures and candidate sets; the simulated fine
ranker is the teacher, pre-fit on the days before ``--train-until`` and updated online. The peers
learn every logged exposure from the log's start, like the teacher. Reports AUC / GAUC on click and long view (progressive,
events at or after ``--eval-from``), consistency recall@10/50/100/200 of the teacher's top-10 and
NDCG@10 against the teacher's order (every ``--consistency-every``-th evaluated request, the teacher
scoring every candidate), the long-view hit rate in the top-``--rank-k``, the all-zero
embedding-row ratio and the pruned export size cut, plus the ratios the targets name. Mode
``ranked`` is the student that learns the fine ranker's order and the feedback
(:mod:`models.listwise`).

    python -m bench.quality --data /work/shared/data/kuairand-pure --baselines --json quality.json
    python -m bench.quality --quick            # a smoke run on synthetic data, a few minutes

Time budget: the teacher learns every request (pre-fit, then online), but the funnel replays only
a deterministic sample of users sized to ``--max-requests`` (default 5,000: about 7 minutes on 2
busy cores for the three students; ``--baselines`` adds about half again). The JSON's
``sampling`` section says what was replayed; ``timing`` has the phases and the median candidate
build time. Raise ``--max-requests`` for tighter numbers when there is time.

The peers' cost, measured on KuaiRand-Pure with every user (``--max-requests 1000000 --train-until
2022-05-02``: 66,768 replayed requests of 1000 candidates; 180,111 exposure samples learned, from
the log's start) on 2 cores shared with other jobs (load 4-5; ``bench/results/quality-peers.json``,
81 min in all, 40 of them the teacher's scoring): Vowpal Wabbit 11.6 ms a request to score
(3.6-5 ms on a quiet machine) and 133 us an exposure to learn, 13.3 min; river LR-FTRL 1.2 ms a
request scored vectorised from river's weights and 534 us an exposure learned by river, 2.9 min,
plus 35 s for river's own ``predict_proba_one`` on every 100th request (53 ms a request; the
check: largest difference 0.0). ``--no-peers`` leaves them out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import torch

from core.settings import ModelSettings
from core.threads import limit_threads
from models.features import ItemFeatures
from models.losses import StudentObjective
from replay.arms import RankerArm, StudentArm
from replay.candidates import CandidateConfig
from replay.dataset import Dataset
from replay.load import load_dataset
from replay.offline import OfflineConfig, OfflineFunnel, local_date_ms

DAY_MS = 86_400_000
MODES = ("cascade", "distill", "impressions", "ranked")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench.quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="KuaiRand-Pure folder or generic CSV (default: synthetic)")
    parser.add_argument("--train-until", default=None, help="YYYY-MM-DD: teacher pre-fit before this day (default: 35%% of the span)")
    parser.add_argument("--eval-from", default=None, help="YYYY-MM-DD: metrics from this day on (default: 55%% of the span)")
    parser.add_argument("--modes", default=",".join(MODES), help="student loss modes, comma-separated")
    parser.add_argument("--baselines", action="store_true", help="also run GlobalCTR, LogisticFTRL and OnlineTree")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the peers: Vowpal Wabbit and river LR-FTRL (default: on)")
    parser.add_argument("--teacher", choices=("mmoe", "wide_deep"), default="mmoe")
    parser.add_argument("--max-requests", type=int, default=5_000, help="requests replayed (users are sampled)")
    parser.add_argument("--candidates", type=int, default=1000, help="candidates per request")
    parser.add_argument("--rank-k", type=int, default=100, help="pre-ranker's top-K that the fine ranker scores")
    parser.add_argument("--consistency-every", type=int, default=10, help="teacher scores all candidates every n-th eval request")
    parser.add_argument("--batch-requests", type=int, default=64, help="requests per student / baseline update")
    parser.add_argument("--teacher-batch-requests", type=int, default=256, help="requests per teacher update")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ranked-feedback-weight", default=f"{StudentObjective().feedback_loss_weight:g}",
                        help="mode ranked: weight of the feedback BCE (StudentObjective.feedback_loss_weight), "
                             "comma-separated for a sweep: one ranked arm per weight, named student_ranked_fw=<w>")
    parser.add_argument("--ranked-listwise-weight", type=float, default=1.0,
                        help="mode ranked: weight of the listwise KL (StudentObjective.listwise_weight)")
    parser.add_argument("--l1", default=None,
                        help="FTRL l1 of the students' rows, comma-separated for a sweep: one arm per mode and "
                             "l1, named student_<mode>_l1=<l1> (default: the trainer's, ModelSettings.trainer_ftrl_l1)")
    parser.add_argument("--head", choices=("cosine", "interaction"), default="cosine",
                        help="the students' head: the cosine or a shallow interaction network (TwoTowerConfig.head)")
    parser.add_argument("--user-bias", action=argparse.BooleanOptionalAction, default=False,
                        help="students with a per-user logit offset (TwoTowerConfig.user_bias)")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    return parser


def floats(values: str | None) -> list[float]:
    """A comma-separated option as floats (``None`` -> none).

    >>> floats("0.5,2"), floats(None)
    ([0.5, 2.0], [])
    """
    return [float(x) for x in values.split(",")] if values else []


def default_dates(dataset: Dataset, train_share: float = 0.35, eval_share: float = 0.55) -> tuple[int, int]:
    """Local midnights nearest to the given shares of the log's time span (UTC+8, like KuaiRand)."""
    first, last = dataset.exposures[0].ts_ms, dataset.exposures[-1].ts_ms
    offset = 8 * 3_600_000

    def midnight(ts: float) -> int:
        return int(round((ts + offset) / DAY_MS)) * DAY_MS - offset

    return midnight(first + train_share * (last - first)), midnight(first + eval_share * (last - first))


def student_arms(modes: Sequence[str], catalog: Sequence[ItemFeatures], quick: bool, seed: int,
                 ranked: Mapping[str, float] = MappingProxyType({}), user_bias: bool = False,
                 l1_values: Sequence[float] = (), head: str = "cosine",
                 feedback_weights: Sequence[float] = ()) -> list[StudentArm]:
    """One arm per mode (per mode and l1 with ``l1_values``); ``ranked`` holds the ``ranked`` mode's
    loss weights (StudentObjective fields), ``feedback_weights`` sweeps its feedback weight (one
    arm ``student_ranked_fw=<w>`` each), ``user_bias`` gives every student a per-user offset
    (TwoTowerConfig.user_bias), ``head`` is TwoTowerConfig.head."""
    from models.export import size_report
    from models.ftrl import FTRLConfig
    from models.learner import StudentLearner
    from models.two_tower import TwoTowerConfig

    config = (
        TwoTowerConfig(embedding_dim=16, hidden_sizes=(64, 64), output_dim=64, user_bias=user_bias, head=head,
                       seed=seed)
        if quick
        else TwoTowerConfig(user_bias=user_bias, head=head, seed=seed)
    )

    def export_report(learner) -> dict[str, float]:
        report = size_report(learner)
        return {
            "export_size_reduction": report["reduction"],
            "export_bytes_unpruned": report["bytes_before"],
            "export_bytes_pruned": report["bytes_after"],
            "export_embedding_share": report["embedding_share"],
            "ftrl_l1": learner.optimizer.ftrl.config.l1,
        }

    def sweep(mode: str) -> list[tuple[str, FTRLConfig]]:
        trainers = FTRLConfig(l1=ModelSettings(mode=mode).trainer_ftrl_l1)
        return [(f"_l1={l1:g}", FTRLConfig(l1=l1)) for l1 in l1_values] or [("", trainers)]

    def objectives(mode: str) -> list[tuple[str, StudentObjective]]:
        if mode != "ranked":
            return [("", StudentObjective(mode=mode))]
        if len(feedback_weights) < 2:
            weight = {"feedback_loss_weight": feedback_weights[0]} if feedback_weights else {}
            return [("", StudentObjective(mode=mode, **{**ranked, **weight}))]
        return [(f"_fw={w:g}", StudentObjective(mode=mode, **{**ranked, "feedback_loss_weight": w}))
                for w in feedback_weights]

    return [
        StudentArm(f"student_{mode}{variant}{suffix}", StudentLearner(config, objective=objective, ftrl=ftrl),
                   catalog, extra_report=export_report)
        for mode in modes for variant, objective in objectives(mode) for suffix, ftrl in sweep(mode)
    ]  # fmt: skip


def baseline_arms(catalog: Sequence[ItemFeatures]) -> list[RankerArm]:
    from models.baselines import GlobalCTR, LogisticFTRL, OnlineTree

    return [
        RankerArm("global_ctr", GlobalCTR(), catalog),
        RankerArm("logistic_ftrl", LogisticFTRL(), catalog),
        RankerArm("online_tree", OnlineTree(), catalog),
    ]


PEERS = ("vowpal_wabbit", "river_lr_ftrl")
RANKED_RECALL_TARGET = 0.95
RANKED_AUC_GAP = 0.01


def peer_arms(catalog: Sequence[ItemFeatures], quick: bool, seed: int) -> list:
    from replay.peers import RiverFTRLArm, VowpalWabbitArm

    return [VowpalWabbitArm(catalog, bits=20 if quick else 24, seed=seed), RiverFTRLArm(catalog)]


def make_teacher(architecture: str, quick: bool, seed: int):
    from models.teacher import TeacherConfig, TeacherLearner

    if quick:
        return TeacherLearner(TeacherConfig(architecture=architecture, embedding_dim=8, hidden_sizes=(64, 32),
                                            expert_sizes=(32, 16), seed=seed))
    return TeacherLearner(TeacherConfig(architecture=architecture, seed=seed))


def comparisons(arms: dict, teacher: dict) -> dict[str, float]:
    """The numbers the targets name, as differences and ratios of one run."""
    out: dict[str, float] = {}
    cascade, impressions = arms.get("student_cascade"), arms.get("student_impressions")
    if cascade and impressions:
        for k in (50, 100, 200):
            key = f"consistency_recall_at_{k}"
            out[f"cascade_minus_impressions_{key}"] = cascade[key] - impressions[key]
            out[f"cascade_over_impressions_{key}"] = (
                cascade[key] / impressions[key] if impressions[key] else math.nan
            )
    for name, arm in arms.items():
        if name.startswith("student_") and "auc_long_view" in arm and "auc_long_view" in teacher:
            out[f"teacher_minus_{name}_auc_long_view"] = teacher["auc_long_view"] - arm["auc_long_view"]
    for name, ranked in arms.items():
        if name.startswith("student_ranked") and "auc_long_view" in teacher:
            # issue 15: recall@100 of the fine ranker's top-10 >= 0.95 and long-view AUC >= fine ranker - 0.01
            out[f"{name}_meets_target"] = bool(
                ranked.get("consistency_recall_at_100", 0.0) >= RANKED_RECALL_TARGET
                and ranked.get("auc_long_view", 0.0) >= teacher["auc_long_view"] - RANKED_AUC_GAP
            )
    out.update(l1_knees(arms))
    peers = {name: arms[name]["auc_long_view"] for name in PEERS if "auc_long_view" in arms.get(name, {})}
    if peers:
        best = max(peers, key=peers.get)
        out["best_peer"] = best
        out["best_peer_auc_long_view"] = peers[best]
        if "auc_long_view" in teacher:
            out["teacher_minus_best_peer_auc_long_view"] = teacher["auc_long_view"] - peers[best]
        for name, arm in arms.items():
            if name.startswith("student_") and "auc_long_view" in arm:
                out[f"{name}_minus_best_peer_auc_long_view"] = arm["auc_long_view"] - peers[best]
    return out


L1_KNEE_AUC_LOSS = 0.005  # issue 15: the default l1 is the largest that loses at most this much AUC


def l1_knees(arms: Mapping[str, dict]) -> dict[str, float]:
    """Per mode of an l1 sweep (arms ``student_<mode>_l1=<l1>``): each l1's long-view AUC loss
    against the sweep's smallest l1, and the knee: the largest l1 losing at most 0.005.

    >>> arms = {f"student_impressions_l1={l1}": {"auc_long_view": auc, "zero_row_ratio": z}
    ...         for l1, auc, z in ((0, 0.74, 0.0), (0.2, 0.737, 0.55), (0.5, 0.72, 0.7))}
    >>> knees = l1_knees(arms)
    >>> knees["impressions_l1_knee"], knees["impressions_l1_knee_zero_row_ratio"]
    (0.2, 0.55)
    """
    by_mode: dict[str, list[tuple[float, dict]]] = {}
    for name, arm in arms.items():
        if name.startswith("student_") and "_l1=" in name and "auc_long_view" in arm:
            mode, l1 = name.removeprefix("student_").split("_l1=")
            by_mode.setdefault(mode, []).append((float(l1), arm))
    out: dict[str, float] = {}
    for mode, sweep in by_mode.items():
        sweep.sort(key=lambda pair: pair[0])
        reference = sweep[0][1]["auc_long_view"]
        for l1, arm in sweep:
            out[f"{mode}_l1={l1:g}_auc_loss"] = reference - arm["auc_long_view"]
        within = [(l1, arm) for l1, arm in sweep if reference - arm["auc_long_view"] <= L1_KNEE_AUC_LOSS]
        knee, arm = within[-1]
        out[f"{mode}_l1_knee"] = knee
        out[f"{mode}_l1_knee_zero_row_ratio"] = arm.get("zero_row_ratio", math.nan)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        print(f"unknown modes {sorted(unknown)}; choose from {MODES}", file=sys.stderr)
        return 2
    limit_threads(args.threads)
    started = time.perf_counter()
    dataset = load_dataset(args.data)
    load_s = time.perf_counter() - started
    train_until, eval_from = default_dates(dataset)
    if args.train_until:
        train_until = local_date_ms(args.train_until)
    if args.eval_from:
        eval_from = local_date_ms(args.eval_from)
    max_requests, n_candidates = args.max_requests, args.candidates
    if args.quick:
        max_requests, n_candidates = min(max_requests, 1_500), min(n_candidates, 300)
    scale = n_candidates / 1000
    config = OfflineConfig(
        train_until_ms=train_until,
        eval_from_ms=eval_from,
        max_requests=max_requests,
        rank_k=min(args.rank_k, n_candidates),
        consistency_every=args.consistency_every,
        batch_requests=args.batch_requests,
        teacher_batch_requests=args.teacher_batch_requests,
        candidates=CandidateConfig(
            n_candidates=n_candidates, n_popular=round(300 * scale), n_author=round(150 * scale),
            n_tag=round(250 * scale), seed=args.seed,
        ),
        seed=args.seed,
    )  # fmt: skip
    catalog = list(dataset.catalog.values())
    arms = student_arms(modes, catalog, args.quick, args.seed, {"listwise_weight": args.ranked_listwise_weight},
                        user_bias=args.user_bias, l1_values=floats(args.l1), head=args.head,
                        feedback_weights=floats(args.ranked_feedback_weight))
    if args.baselines:
        arms += baseline_arms(catalog)
    if args.peers:
        arms += peer_arms(catalog, args.quick, args.seed)
    teacher = make_teacher(args.teacher, args.quick, args.seed)
    report = OfflineFunnel(dataset, arms, teacher, config).run()
    report["comparisons"] = comparisons(report["arms"], report["teacher"])
    report["data"] = dataset.report.to_dict()
    report["timing"]["load_s"] = load_s
    report["run"] = {"argv": list(argv) if argv is not None else sys.argv[1:], "teacher": args.teacher,
                     "quick": args.quick, "torch_threads": torch.get_num_threads()}
    text = json.dumps(report, indent=2, default=float)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(summary_table(report))
    return 0


def summary_table(report: dict) -> str:
    columns = ("auc_click", "gauc_click", "auc_long_view", "gauc_long_view", "consistency_recall_at_10",
               "consistency_recall_at_50", "consistency_recall_at_100", "consistency_recall_at_200", "ndcg_at_10",
               "hit_rate_long_view_at_100", "eval_exposures", "zero_row_ratio", "export_size_reduction")
    rows = [("arm", *columns)]
    for name, arm in {**report["arms"], "teacher": report["teacher"]}.items():
        rows.append((name, *(f"{arm[c]:.4f}" if isinstance(arm.get(c), float) else str(arm.get(c, "-"))
                             for c in columns)))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)) for row in rows)


if __name__ == "__main__":
    raise SystemExit(main())
