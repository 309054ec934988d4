"""``prerank``: the one command line of the project.

Subcommands: ``stack up|down|status``, ``topics create``, ``worker``, ``bench NAME``,
``health`` and, as they land, ``replay``, ``demo`` and ``report``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
import time
from pathlib import Path

from core.kafka import kafka_python_options
from core.redis import redis_client
from core.settings import DEFAULT_FTRL_L1, Settings, load_settings
from prerank.exceptions import PrerankError
from replay.exceptions import ReplayError, ReplayStalled

BENCHES = ("train", "score", "quality", "sparsity", "freshness", "scoring-topic", "streaming-overhead", "reliability", "load")


def _stack(args: argparse.Namespace, settings: Settings) -> int:
    from prerank import stack

    if args.action == "prepare":
        stack.prepare(settings, with_prometheus=True)
        print("stack prerequisites present (java, redis-server, prometheus, Kafka jars)")
    elif args.action == "up" and args.only_redis_cluster:
        from prerank.redis_cluster import cluster_nodes, cluster_up

        seconds = cluster_up(cluster_nodes(settings), settings.stack.start_timeout_s)
        print(f"redis-cluster ready after {seconds:5.1f}s")
    elif args.action == "up":
        started = time.monotonic()
        ready = stack.up(settings, with_prometheus=args.prometheus or None, with_redis_cluster=args.redis_cluster)
        for name, seconds in ready.items():
            print(f"{name:<11} ready after {seconds:5.1f}s")
        print(f"stack up in {time.monotonic() - started:.1f}s")
    elif args.action == "down":
        stopped = stack.down(settings)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    else:
        report = stack.status(settings)
        for name, state in report.items():
            health = "ready" if state["ready"] else ("starting" if state["pid"] else "stopped")
            if not args.quiet:
                print(f"{name:<11} {health:<8} pid={state['pid']} {state['address']}")
        # 0: Kafka and Redis ready; 1: something of ours is running but not ready; 3: not running
        if any(state["pid"] and not state["ready"] for state in report.values()):
            return 1
        return 0 if report["kafka"]["ready"] and report["redis"]["ready"] else 3
    return 0


def _topics(args: argparse.Namespace, settings: Settings) -> int:
    from streams.registry import create_topics

    outcome = create_topics(kafka_python_options(settings.kafka), settings.topics)
    for name, what in outcome.items():
        print(f"{what:<8} {name}")
    return 0


def _health(args: argparse.Namespace, settings: Settings) -> int:
    """Bring the stack up, create topics and check Kafka and Redis answer: the interim main job."""
    from prerank import stack

    stack.up(settings)
    _topics(args, settings)

    client = redis_client(settings.redis)
    client.ping()
    print(json.dumps(stack.status(settings), indent=2))
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from agents.worker import run_worker

    group = {key: value for key, value in (("trainer_world_size", args.world_size), ("trainer_rank", args.rank))
             if value is not None}
    if group:  # the flags win over PRERANK_WORKER__TRAINER_* (validated together)
        worker = type(settings.worker)(**{**settings.worker.model_dump(), **group})
        settings = settings.model_copy(update={"worker": worker})
    return run_worker(settings, agents=args.agents.split(","), extra=args.faust_args, index=args.index,
                      parent_pid=args.parent_pid)


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from prerank.console import ReplayConsole
    from replay.command import run_replay
    from replay.exceptions import ReplayInterrupted

    data = None if args.synthetic else (args.data or settings.data)
    settings = _with_ftrl_l1(settings, args.ftrl_l1, sampled=args.max_requests is not None)
    console = ReplayConsole()
    try:
        report = run_replay(
            settings, data, args.mode or ["cascade"], args.eval_from, args.report_dir, until=args.until,
            train_until=args.train_until, baselines=args.baselines, peers=args.peers, max_requests=args.max_requests,
            n_candidates=args.candidates, progress=console, speed=args.speed, resume=args.resume,
            l1_sweep=_floats(args.l1_sweep), l1_sweep_requests=args.l1_sweep_requests,
            warm_start=not args.cold_start, inflight=args.inflight,
        )
    except (ReplayInterrupted, ReplayStalled, KeyboardInterrupt) as stopped:
        return _interrupted(stopped, args.report_dir)
    finally:
        console.close()
    _print_report(args.report_dir, report)
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    """The main job: local stack up, the funnel replayed through the real agents, the report."""
    from prerank import stack
    from prerank.console import ReplayConsole
    from replay.command import run_replay
    from replay.exceptions import ReplayInterrupted

    settings = _with_ftrl_l1(settings, args.ftrl_l1, sampled=True)
    print("starting the local stack (Kafka, Redis, Prometheus on 127.0.0.1) ...")
    for name, seconds in stack.up(settings, with_prometheus=True).items():
        print(f"  {name:<11} ready after {seconds:5.1f}s")
    data = args.data or settings.data
    if not Path(data).exists():
        print(f"!! no dataset at {data}: replaying SYNTHETIC data (set PRERANK_DATA or --data for real logs)")
        data = None
    console = ReplayConsole()
    try:
        report = run_replay(
            settings, data, ["cascade", "impressions"], None, args.report_dir, baselines=True,
            max_requests=args.max_requests, n_candidates=args.candidates, progress=console,
            l1_sweep=_floats(DEMO_L1_SWEEP), l1_sweep_requests=args.l1_sweep_requests,
        )
    except (ReplayInterrupted, ReplayStalled, KeyboardInterrupt) as stopped:
        return _interrupted(stopped, args.report_dir)
    finally:
        console.close()
    _print_report(args.report_dir, report)
    print(f"Prometheus: http://{settings.stack.host}:{settings.stack.prometheus_port} (the stack stays up; "
          "`prerank stack down` stops it)")
    return 0


def _with_ftrl_l1(settings: Settings, l1: float | None, sampled: bool) -> Settings:
    """``settings`` with the trainer's FTRL l1: the flag's, else the one configured, else on a
    user-sampled stream :data:`SAMPLED_FTRL_L1` (the default is the mode's knee at full volume)."""
    if l1 is None:
        if not sampled or settings.model.ftrl_l1 is not None:
            return settings
        l1 = SAMPLED_FTRL_L1
    return settings.model_copy(update={"model": type(settings.model)(**{**settings.model.model_dump(), "ftrl_l1": l1})})


def _print_report(report_dir: Path, report: dict) -> None:
    """The table, what each arm is, and where the files are."""
    from prerank.console import describe_arms
    from replay.report import write_report

    table, _, plots = write_report(report_dir, report).partition("\n\nplots: ")
    print()
    print(table)
    print()
    print(describe_arms(report))
    print(f"\nreport: {report_dir / 'report.md'} and {report_dir / 'report.json'}")
    if plots:
        print(f"plots:  {plots}")


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from replay.report import write_report

    print(write_report(args.report_dir))
    return 0


DEMO_L1_SWEEP = "0,0.5,2"
# FTRL's l1 grows with the gradients a row sums, so the default (the knee at full volume) zeroes
# nearly every row of a user-sampled stream; there 0.5 is about the knee (README, the l1 sweeps).
SAMPLED_FTRL_L1 = DEFAULT_FTRL_L1


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _interrupted(stopped: BaseException, report_dir: Path) -> int:
    """Ctrl-C or a stalled funnel: the run's progress is on disk; say how to continue."""
    stalled = isinstance(stopped, ReplayStalled)
    what = str(stopped) if isinstance(stopped, ReplayError) else "interrupted"
    print(f"\n{what}; progress saved. Continue with: prerank replay --resume --report-dir {report_dir}",
          file=sys.stderr if stalled else sys.stdout)
    return 1 if stalled else 130


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    module = importlib.import_module(f"bench.{args.name.replace('-', '_')}")
    return module.main(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prerank", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stack", help="the embedded local stack (Kafka, Redis, Prometheus)")
    p.add_argument("action", choices=("prepare", "up", "down", "status"),
                   help="prepare: check the programs and fetch the Kafka jars, start nothing")
    p.add_argument("--prometheus", action="store_true", help="also start Prometheus")
    p.add_argument("--redis-cluster", action="store_true",
                   help="also start a local Redis Cluster (3 primaries, 3 replicas) on stack.redis_cluster_port..+5")
    p.add_argument("--only-redis-cluster", action="store_true",
                   help="up: start only the Redis Cluster (next to a Kafka and Redis started elsewhere)")
    p.add_argument("--quiet", action="store_true", help="status: exit code only (0 up, 1 starting, 3 down)")
    p.set_defaults(run=_stack)

    p = sub.add_parser("topics", help="create every topic (idempotent)")
    p.add_argument("action", choices=("create",))
    p.set_defaults(run=_topics)

    p = sub.add_parser("health", help="start the stack, create topics, check every service")
    p.set_defaults(run=_health)

    p = sub.add_parser("worker", help="run Faust agents in this process")
    p.add_argument("--agents", default="history,joiner,scorer")
    p.add_argument("--index", type=int, default=0, help="worker number on this host: offsets web and metrics ports")
    p.add_argument("--parent-pid", type=int, default=None,
                   help="stop when this process (the one that started the worker) is gone")
    p.add_argument("--world-size", type=int, default=None,
                   help="trainers in the data-parallel group (worker.trainer_world_size)")
    p.add_argument("--rank", type=int, default=None, help="this trainer's rank in the group, 0 publishes")
    p.add_argument("faust_args", nargs=argparse.REMAINDER)
    p.set_defaults(run=_worker)

    p = sub.add_parser("replay", help="replay a dataset through the real agents and write a report")
    p.add_argument("--data", type=Path, default=None, help="KuaiRand-Pure folder or generic CSV (default: settings.data)")
    p.add_argument("--synthetic", action="store_true", help="use the synthetic generator instead of data")
    p.add_argument("--until", default=None, help="last date (exclusive), YYYY-MM-DD")
    p.add_argument("--train-until", default=None, help="pre-fit the fine ranker before this date (default: --eval-from)")
    p.add_argument("--eval-from", default=None, help="metrics cover events at or after this date (default: the last two days)")
    p.add_argument("--mode", action="append", choices=("cascade", "distill", "impressions", "ranked"))
    p.add_argument("--baselines", action="store_true", help="also evaluate global CTR, LR-FTRL and an online tree")
    p.add_argument("--peers", action="store_true",
                   help="also evaluate Vowpal Wabbit and river LR-FTRL on the same requests (replay/peers.py)")
    sampled = p.add_mutually_exclusive_group()
    sampled.add_argument("--max-requests", type=int, default=3000, help="user-sampled requests streamed per mode")
    sampled.add_argument("--all-users", dest="max_requests", action="store_const", const=None,
                         help="stream every user's requests (no user sampling, no --max-requests)")
    p.add_argument("--candidates", type=int, default=1000, help="candidates per request")
    p.add_argument("--speed", type=float, default=None, help="x times real time (default: as fast as possible)")
    p.add_argument("--inflight", type=_positive_int, default=16,
                   help="requests outstanding at once (the closed funnel's concurrency)")
    p.add_argument("--report-dir", type=Path, default=Path("reports/replay"))
    p.add_argument("--l1-sweep", default="0,0.1,0.5,1,2",
                   help="FTRL l1 values to sweep in process for the zero-rows plot ('' skips it)")
    p.add_argument("--l1-sweep-requests", type=int, default=20_000, help="the last N replayed requests")
    p.add_argument("--ftrl-l1", type=float, default=None,
                   help="the trainer's FTRL l1 (default: PRERANK_MODEL__FTRL_L1 if set, else "
                        f"{SAMPLED_FTRL_L1} on a user sample, the mode's knee at full volume with --all-users)")
    p.add_argument("--cold-start", action="store_true",
                   help="the student starts from random weights (default: trained on the teacher's pre-period)")
    p.add_argument("--resume", action="store_true",
                   help="continue the newest interrupted run under --report-dir with its own parameters")
    p.set_defaults(run=_replay)

    p = sub.add_parser("demo", help="the main job: stack up, replay KuaiRand through the agents, report")
    p.add_argument("--data", type=Path, default=None, help="dataset folder (default: PRERANK_DATA / settings.data)")
    p.add_argument("--max-requests", type=int, default=600, help="user-sampled requests streamed per mode")
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--report-dir", type=Path, default=Path("reports/demo"))
    p.add_argument("--l1-sweep-requests", type=int, default=8_000)
    p.add_argument("--ftrl-l1", type=float, default=None,
                   help=f"the trainer's FTRL l1 (default: PRERANK_MODEL__FTRL_L1 if set, else {SAMPLED_FTRL_L1}: "
                        "the demo streams a user sample)")
    p.set_defaults(run=_demo)

    p = sub.add_parser("report", help="write report.md and plots from a replay's report.json")
    p.add_argument("--report-dir", type=Path, default=Path("reports/replay"))
    p.set_defaults(run=_report)

    p = sub.add_parser("bench", help="run a benchmark; writes JSON with --json PATH")
    p.add_argument("name", choices=BENCHES)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(run=_bench)
    return parser


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    # kafka-python warns when its I/O loop was held up (a busy core, not a misconfiguration).
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    settings = load_settings()
    # A supervisor's SIGTERM (a CI timeout, `kill`) stops a command as Ctrl-C does: requests in
    # flight are drained, progress saved and the workers it started stopped. A worker's Faust
    # loop installs its own handler over this one.
    signal.signal(signal.SIGTERM, _terminate)
    from core.threads import limit_threads

    # Workers, the replay and Kafka share two cores: more than one thread per process oversubscribes
    # them and OpenMP's and OpenBLAS's spinning threads make every step many times slower.
    limit_threads(settings.worker.torch_threads)
    try:
        return args.run(args, settings)
    except (PrerankError, ReplayError) as exc:
        print(f"prerank: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
