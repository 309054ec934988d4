"""promtool: configs and rules are valid, every alert's unit tests pass, fire and stay quiet."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from monitoring.rules import alert_test_outcomes, load_alert_rules

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus"
REQUIRED_ALERTS = {
    "ConsistencyDropped", "FreshnessTooOld", "ScorerLatencyP99High", "DeadLettersFlowing",
    "ConsumerLagGrowing", "TrainerStalled", "PublisherStalled",
}


def promtool_run(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("config", ["prometheus-local.yml", "prometheus-compose.yml"])
def test_check_config(promtool, config):
    result = promtool_run(promtool, "check", "config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    # The config's rule_files glob must find the rules, not silently match nothing.
    assert "rules/health.yml" in result.stdout + result.stderr


def test_check_rules(promtool):
    files = sorted(str(p.relative_to(PROMETHEUS_DIR)) for p in (PROMETHEUS_DIR / "rules").glob("*.yml"))
    assert files
    result = promtool_run(promtool, "check", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass(promtool):
    files = sorted(str(p.relative_to(PROMETHEUS_DIR)) for p in (PROMETHEUS_DIR / "tests").glob("*.test.yml"))
    assert files
    result = promtool_run(promtool, "test", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_can_fail(promtool, tmp_path):
    """A wrong expectation must make promtool fail, or the passing run above proves nothing."""
    source = (PROMETHEUS_DIR / "tests" / "serving.test.yml").read_text()
    broken = source.replace("14.95ms", "14.90ms")
    assert broken != source
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules").symlink_to(PROMETHEUS_DIR / "rules")
    (tmp_path / "tests" / "serving.test.yml").write_text(broken)
    result = subprocess.run([promtool, "test", "rules", "tests/serving.test.yml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0


def test_required_alerts_exist_once():
    names = [rule.name for rule in load_alert_rules()]
    assert len(names) == len(set(names))
    assert REQUIRED_ALERTS <= set(names)


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    outcomes = alert_test_outcomes()
    for rule in load_alert_rules():
        assert outcomes.get(rule.name) == {"fires", "quiet"}, rule.name
