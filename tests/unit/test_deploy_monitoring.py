"""The Prometheus alert rules and the Grafana dashboard under deploy/ name only what exists.

Every metric an expression names must be one the ingest or the worker exposes (with the
sample suffixes Prometheus adds), every label it filters or groups by must be one of that
metric's labels, and every ingest outcome code it matches must be a code the service emits.
When promtool is installed (``make test`` installs it), the rules are also checked by it and
its unit tests (deploy/prometheus/alerts.test.yml) prove that each alert fires.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from consumers.metrics import WorkerMetrics
from propagator.metrics import IngestMetrics

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy/prometheus/alerts.yml"
RULE_TESTS = REPO / "deploy/prometheus/alerts.test.yml"
DASHBOARD = REPO / "deploy/grafana/propagator.json"

# Labels Prometheus itself attaches: by the scrape, and `le` on histogram buckets.
_TARGET_LABELS = {"instance", "job"}
# The issue's list: each of these situations has an alert.
REQUIRED_ALERTS = {
    "PropagatorDeadLettersGrowing",
    "PropagatorConsumerLagHigh",
    "PropagatorVerificationFailureSpike",
    "PropagatorNoEvents",
    "PropagatorCircuitOpen",
}
# A selector: a metric name, optionally followed by label matchers.
_SELECTOR = re.compile(r"\b((?:[a-z_]+:)?propagator_[a-z0-9_]+(?::[a-z0-9_]+)?)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def _exposed_metrics() -> dict[str, set[str]]:
    """Every sample name the service exposes, with the labels it carries."""
    exposed: dict[str, set[str]] = {}
    for owner in (IngestMetrics(CollectorRegistry()), WorkerMetrics(CollectorRegistry())):
        for metric in vars(owner).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            name = metric._name
            labels = set(metric._labelnames) | _TARGET_LABELS
            if isinstance(metric, Counter):
                for suffix in ("_total", "_created"):
                    exposed[name + suffix] = labels
            elif isinstance(metric, Histogram):
                exposed[f"{name}_bucket"] = labels | {"le"}
                for suffix in ("_count", "_sum", "_created"):
                    exposed[name + suffix] = labels
            elif isinstance(metric, Gauge):
                exposed[name] = labels
    return exposed


def _emitted_outcomes() -> set[str]:
    """The outcome label values ingest can emit: success statuses and every refusal code."""
    codes = {"published", "duplicate", "ignored", "recorded", "accepted"}
    for path in (REPO / "propagator").rglob("*.py"):
        text = path.read_text()
        codes |= set(re.findall(r'\bcode\s*=\s*"([a-z_]+)"', text))
        # The JWT verifier's table: (jwt.SomeError, "code").
        codes |= set(re.findall(r'\(jwt\.[\w.]+,\s*"([a-z_]+)"\)', text))
    return codes


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _dashboard_targets(panels: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in panels:
        yield from _dashboard_targets(panel.get("panels", []))
        for target in panel.get("targets", []):
            yield panel["title"], target


def _check_expression(
    expr: str, exposed: dict[str, set[str]], recorded: dict[str, set[str]]
) -> list[str]:
    """What in ``expr`` names something that does not exist (empty when all is well)."""
    problems: list[str] = []
    known = {**exposed, **recorded}
    selectors = list(_SELECTOR.finditer(expr))
    if not selectors:
        problems.append("names no propagator metric")
    labels_in_use: set[str] = set()
    for match in selectors:
        name, matchers = match.group(1), match.group(2) or ""
        if name not in known:
            problems.append(f"unknown metric {name}")
            continue
        labels_in_use |= known[name]
        for label, op, value in _MATCHER.findall(matchers):
            if label not in known[name]:
                problems.append(f"{name} has no label {label}")
            if name == "propagator_ingest_requests_total" and label == "outcome" and "~" in op:
                unknown = set(value.split("|")) - _emitted_outcomes()
                if unknown:
                    problems.append(f"outcome codes never emitted: {sorted(unknown)}")
    for grouping in _GROUPING.findall(expr):
        for label in filter(None, (x.strip() for x in grouping.split(","))):
            if label not in labels_in_use:
                problems.append(f"groups by {label!r}, a label none of its metrics has")
    return problems


class TestAlertRules:
    def test_every_expression_names_existing_metrics_labels_and_codes(self) -> None:
        """No rule refers to a metric, label or outcome code the service does not produce."""
        exposed = _exposed_metrics()
        rules = _rules()
        recorded: dict[str, set[str]] = {}
        for rule in rules:
            if "record" in rule:
                grouped = _GROUPING.findall(rule["expr"])
                recorded[rule["record"]] = {
                    x.strip() for g in grouped for x in g.split(",") if x.strip()
                }
        problems = {
            rule.get("alert") or rule["record"]: _check_expression(rule["expr"], exposed, recorded)
            for rule in rules
        }
        assert {} == {name: found for name, found in problems.items() if found}

    def test_every_alert_has_the_fields_an_operator_needs(self) -> None:
        """Each issue-listed alert exists, with a duration, a severity, a summary and a
        description."""
        alerts = {rule["alert"]: rule for rule in _rules() if "alert" in rule}
        assert REQUIRED_ALERTS <= set(alerts)
        for name, rule in alerts.items():
            assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), name
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
            assert rule["annotations"]["summary"].strip(), name
            assert rule["annotations"]["description"].strip(), name

    def test_verification_alert_covers_the_authentication_failures(self) -> None:
        """A forged signature, a stale timestamp, a wrong shared secret or a bad JWT all count
        towards the verification-failure spike."""
        rules = {r.get("record"): r["expr"] for r in _rules()}
        expr = rules["source:propagator_ingest_verification_failures:rate5m"]
        matched = set(re.search(r'outcome=~"([^"]+)"', expr).group(1).split("|"))  # type: ignore[union-attr]
        assert {
            "invalid_signature",
            "timestamp_out_of_tolerance",
            "unauthorized",
            "invalid_token",
            "token_expired",
            "unknown_key",
        } <= matched
        # Refusals that say nothing about authenticity stay out of it.
        assert not matched & {"malformed_payload", "rate_limited", "payload_too_large"}

    def test_the_checker_catches_a_wrong_name(self) -> None:
        """The check above can fail: a misspelt metric, label or code is reported."""
        exposed = _exposed_metrics()
        assert ["unknown metric propagator_dead_letter_total"] == _check_expression(
            "increase(propagator_dead_letter_total[5m]) > 0", exposed, {}
        )
        assert ["propagator_circuit_open has no label source"] == _check_expression(
            'propagator_circuit_open{source="x"} == 1', exposed, {}
        )
        assert ["outcome codes never emitted: ['bad_signature']"] == _check_expression(
            'rate(propagator_ingest_requests_total{outcome=~"bad_signature"}[5m])', exposed, {}
        )
        assert ["groups by 'subscriber', a label none of its metrics has"] == _check_expression(
            "sum by (subscriber) (rate(propagator_ingest_requests_total[5m]))", exposed, {}
        )

    def test_promtool_accepts_the_rules_and_their_unit_tests_pass(self) -> None:
        """promtool's own syntax check, and alerts.test.yml: each alert fires on its case."""
        promtool = shutil.which("promtool")
        if promtool is None:
            message = "promtool is not installed (`make promtool` installs it)"
            if os.environ.get("CI"):
                pytest.fail(message)  # CI runs `make test`, which installs it: never skip there.
            pytest.skip(message)
        for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]):
            result = subprocess.run(
                [promtool, *args], capture_output=True, text=True, timeout=60, check=False
            )
            assert 0 == result.returncode, result.stdout + result.stderr


class TestGrafanaDashboard:
    def test_it_parses_and_every_query_names_existing_metrics(self) -> None:
        """The dashboard imports as JSON, and no panel queries a metric that does not exist."""
        dashboard = json.loads(DASHBOARD.read_text())
        targets = list(_dashboard_targets(dashboard["panels"]))
        assert len(targets) >= 10
        exposed = _exposed_metrics()
        problems = {
            f"{title} / {target['refId']}": found
            for title, target in targets
            if (found := _check_expression(target["expr"], exposed, {}))
        }
        assert {} == problems
        for variable in dashboard["templating"]["list"]:
            assert not _check_expression(variable["definition"], exposed, {}), variable["name"]

    def test_panels_have_unique_ids_and_a_place(self) -> None:
        """Grafana needs a unique id and a grid position per panel; data panels a datasource."""
        panels = json.loads(DASHBOARD.read_text())["panels"]
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids))
        for panel in panels:
            assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
            if panel.get("targets"):
                assert "${DS_PROMETHEUS}" == panel["datasource"]["uid"], panel["title"]

    def test_it_shows_what_the_issue_asks_for(self) -> None:
        """Ingest by source and outcome, propagation latency, lag, retries, dead letters and
        circuit state each have a panel."""
        dashboard = json.loads(DASHBOARD.read_text())
        queried = " ".join(t["expr"] for _, t in _dashboard_targets(dashboard["panels"]))
        for metric in (
            "propagator_ingest_requests_total",
            "propagator_propagation_seconds_bucket",
            "propagator_consumer_lag_seconds",
            "propagator_consumer_lag_records",
            "propagator_retries_total",
            "propagator_dead_letters_total",
            "propagator_dead_letter_depth",
            "propagator_circuit_open",
        ):
            assert metric in queried
