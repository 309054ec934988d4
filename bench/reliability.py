"""The reliability table: runs ``tests/reliability`` and collects what each test measured.

Every reliability test records its figures (records sent, lost, duplicated, seconds to recover)
with pytest's ``record_property``; this script runs the suite in-process, gathers the
``user_properties`` of every test report with its outcome, and writes them as JSON and as the
markdown table of ``docs/reliability.md``. ``--long`` adds the 60 s load run of
:mod:`bench.load` (the suite itself runs a short one).

    python -m bench.reliability --json reliability.json [--long] [-k EXPR]
    prerank bench reliability --json PATH            # once BENCHES lists it

Needs the local stack (``prerank stack up``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "tests" / "reliability"


class Collector:
    """A pytest plugin keeping each test's outcome, duration and recorded properties."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}

    def pytest_runtest_logreport(self, report) -> None:
        row = self.rows.setdefault(report.nodeid, {"test": report.nodeid.split("::")[-1], "outcome": "passed",
                                                    "seconds": 0.0, "figures": {}})
        row["seconds"] = round(row["seconds"] + report.duration, 1)
        row["figures"].update(dict(report.user_properties))
        if report.failed:
            row["outcome"] = "failed"
        elif hasattr(report, "wasxfail"):
            row["outcome"] = "xfail (known bug)" if report.skipped else "xpass"
        elif report.skipped and row["outcome"] == "passed":
            row["outcome"] = "skipped"


def markdown(rows: list[dict]) -> str:
    """The table: one line per test, its outcome and figures.

    >>> print(markdown([{"test": "t", "outcome": "passed", "seconds": 1.0, "figures": {"lost": 0}}]))
    | test | outcome | s | figures |
    | --- | --- | --- | --- |
    | t | passed | 1.0 | lost=0 |
    """
    lines = ["| test | outcome | s | figures |", "| --- | --- | --- | --- |"]
    for row in rows:
        figures = ", ".join(f"{key}={value}" for key, value in row["figures"].items())
        lines.append(f"| {row['test']} | {row['outcome']} | {row['seconds']} | {figures} |")
    return "\n".join(lines)


def run_suite(select: str | None) -> tuple[int, list[dict]]:
    import pytest

    collector = Collector()
    args = [str(SUITE), "-q", "-p", "no:cacheprovider", "--rootdir", str(REPO)]
    if select:
        args += ["-k", select]
    code = pytest.main(args, plugins=[collector])
    return int(code), list(collector.rows.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.reliability", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--long", action="store_true", help="also run the 60 s load benchmark")
    parser.add_argument("-k", dest="select", help="only tests matching this pytest -k expression")
    args = parser.parse_args(argv)
    started = time.monotonic()
    code, rows = run_suite(args.select)
    result = {"suite_exit_code": code, "suite_seconds": round(time.monotonic() - started, 1), "tests": rows}
    if args.long:
        from bench import load

        result["load"] = load.run(load.LoadConfig())
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
