"""The deployment's Prometheus config and alert rules, checked by Prometheus's own promtool
(docker/fetch-prometheus.sh takes it from Debian's package on first use)."""

import subprocess
from pathlib import Path

import pytest

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "docker" / "prometheus"
PROMTOOL = PROMETHEUS_DIR / "bin" / "promtool"


@pytest.fixture(scope="module")
def promtool() -> Path:
    if not PROMTOOL.exists():
        subprocess.run([str(PROMETHEUS_DIR.parent / "fetch-prometheus.sh")], check=True, timeout=300)
    return PROMTOOL


def promtool_run(promtool: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(promtool), *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)


def test_the_prometheus_config_and_its_rule_file_are_valid(promtool):
    result = promtool_run(promtool, "check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 rules found" in result.stdout


def test_each_alert_fires_on_its_synthetic_series_and_not_on_the_healthy_ones(promtool):
    result = promtool_run(promtool, "test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test():
    rules = (PROMETHEUS_DIR / "rules.yml").read_text()
    tests = (PROMETHEUS_DIR / "rules_test.yml").read_text()
    alerts = [line.split(":", 1)[1].strip() for line in rules.splitlines() if line.strip().startswith("- alert:")]
    assert alerts and all(f"alertname: {alert}" in tests for alert in alerts)
