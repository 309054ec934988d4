"""The alert rules and their promtool tests, read as data for the checks.

>>> names = [rule.name for rule in load_alert_rules()]
>>> "ScorerLatencyP99High" in names and "TrainerStalled" in names
True
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROMETHEUS_DIR = Path(__file__).resolve().parent / "prometheus"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_TESTS_DIR = PROMETHEUS_DIR / "tests"


def _yaml(path: Path):
    import yaml  # a dev dependency: only the checks read rules as data

    return yaml.safe_load(path.read_text())


@dataclass(frozen=True)
class AlertRule:
    name: str
    expr: str
    file: Path


def load_alert_rules(rules_dir: Path = RULES_DIR) -> list[AlertRule]:
    """Every alerting rule of ``rules_dir/*.yml``, in file order."""
    rules = []
    for path in sorted(Path(rules_dir).glob("*.yml")):
        for group in _yaml(path)["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rules.append(AlertRule(rule["alert"], rule["expr"].strip(), path))
    return rules


def alert_test_outcomes(tests_dir: Path = RULE_TESTS_DIR) -> dict[str, set[str]]:
    """For each alert named in the promtool tests: ``{"fires", "quiet"}`` as covered.

    An evaluation with expected alerts counts as ``fires``, one with ``exp_alerts: []``
    as ``quiet``.
    """
    outcomes: dict[str, set[str]] = {}
    for path in sorted(Path(tests_dir).glob("*.test.yml")):
        for test in _yaml(path)["tests"]:
            for check in test.get("alert_rule_test", []):
                outcome = "fires" if check.get("exp_alerts") else "quiet"
                outcomes.setdefault(check["alertname"], set()).add(outcome)
    return outcomes
