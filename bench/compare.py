"""Did a change make a benchmark slower? The same benchmarks on two revisions, alternated, as ratios.

Checks out ``--base`` and ``--head`` (default ``HEAD``, the committed state: edits in progress do
not count) into temporary git worktrees and runs each benchmark in both in turn (base, head, base, head ...) for ``--rounds`` rounds, so both sides see the same
machine noise. Writes every figure of every run and, per figure, the ratio head / base of each
round and its median: a figure that is "lower is better" (latencies) got slower if the median
ratio is above 1, a throughput if it is below 1.

    python -m bench.compare --base a663434 --bench score --bench train --bench freshness:--quick \\
        --rounds 2 --json bench/results/compare.json

A benchmark is a ``bench`` module name with its arguments after a colon (``freshness:--quick``);
it must accept ``--json PATH``. Benchmarks that need the local stack (freshness) need it up.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the git revision to compare against")
    parser.add_argument("--head", default="HEAD", help="the revision to measure (default HEAD)")
    parser.add_argument("--bench", action="append", required=True, help="bench module[:args], repeatable")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write the comparison here")
    return parser


def numeric_figures(result: dict) -> dict[str, float]:
    """The top-level numbers of a benchmark's JSON (booleans and nested sections left out).

    >>> numeric_figures({"p99_ms": 2.5, "requests": 50, "ok": True, "runs": [1, 2]})
    {'p99_ms': 2.5, 'requests': 50.0}
    """
    return {key: float(value) for key, value in result.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def ratios(base_runs: list[dict[str, float]], head_runs: list[dict[str, float]]) -> dict[str, dict]:
    """Per figure: head / base for each round, and the median of those ratios.

    >>> ratios([{"p": 2.0}, {"p": 4.0}], [{"p": 1.0}, {"p": 4.0}])["p"]
    {'per_round': [0.5, 1.0], 'median': 0.75}
    """
    out = {}
    for key in base_runs[0]:
        pairs = [(b[key], h[key]) for b, h in zip(base_runs, head_runs) if key in b and key in h and b[key]]
        if pairs:
            per_round = [head / base for base, head in pairs]
            out[key] = {"per_round": per_round, "median": statistics.median(per_round)}
    return out


def run_bench(checkout: Path, spec: str, out: Path) -> dict:
    module, _, args = spec.partition(":")
    command = [sys.executable, "-m", f"bench.{module}", *args.split(), "--json", str(out)]
    # cwd first on sys.path: the checkout's own packages are imported, not the installed ones.
    done = subprocess.run(command, cwd=checkout, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{spec} in {checkout} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="prerank-compare-"))
    checkouts = {"base": work / "base", "head": work / "head"}
    revisions = {}
    for side, revision in (("base", args.base), ("head", args.head)):
        revisions[side] = subprocess.run(["git", "rev-parse", revision], cwd=REPO, capture_output=True,
                                         text=True, check=True).stdout.strip()
        subprocess.run(["git", "worktree", "add", "--detach", str(checkouts[side]), revisions[side]], cwd=REPO,
                       check=True, capture_output=True)
    runs: dict[str, dict[str, list]] = {spec: {"base": [], "head": []} for spec in args.bench}
    try:
        for round_index in range(args.rounds):
            for spec in args.bench:
                for side, checkout in checkouts.items():
                    result = run_bench(checkout, spec, work / f"{side}-{round_index}.json")
                    runs[spec][side].append(numeric_figures(result))
                    print(f"round {round_index + 1} {spec} {side} done", file=sys.stderr)
    finally:
        for checkout in checkouts.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(checkout)], cwd=REPO, capture_output=True,
                           check=False)
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "base": revisions["base"], "head": revisions["head"], "rounds": args.rounds,
        "benchmarks": {spec: {"runs": sides, "head_over_base": ratios(sides["base"], sides["head"])}
                       for spec, sides in runs.items()},
    }
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
