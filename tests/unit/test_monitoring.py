"""deploy/monitoring/ against what the service really exports.

Prometheus accepts a query over a metric that does not exist and simply returns nothing, so a renamed
metric or label would leave an empty panel and an alert that can never fire. These tests render a
real `ServiceMetrics` registry and require every series, label and recorded name used by the PromQL
of the PrometheusRule and the dashboard to be one the service (or a rule in the file) produces.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import LATENCY_BUCKETS, BatchObservation, ServiceMetrics

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
SERVICE_MONITOR = MONITORING / "servicemonitor.yaml"
RULES = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
RAYSERVICE = ROOT / "deploy" / "kuberay" / "rayservice.yaml"

# PromQL, just enough of it to find names. String literals are blanked first so that a matcher value
# such as job="blockserve-serve-svc" or "$task" is never read as a name.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME = re.compile(r"(?<![\w:.])[A-Za-z_:][\w:]*")
_SELECTOR = re.compile(r"(?<![\w:])([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_LABEL_VALUES = re.compile(r"label_values\(\s*(?:([A-Za-z_:][\w:]*)\s*,\s*)?(\w+)\s*\)")
_TEMPLATE_LABEL = re.compile(r"\$labels\.(\w+)")
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_PREFIX = "blockserve_"


def _blank_strings(expr: str) -> str:
    return _STRING.sub('""', expr)


def _series_names(expr: str) -> set[str]:
    """blockserve_* series an expression reads (sample names, suffixes included)."""
    return {name for name in _NAME.findall(_blank_strings(expr)) if name.startswith(_PREFIX)}


def _recorded_names(expr: str) -> set[str]:
    """Names with a colon: by convention (and only here) recording-rule outputs."""
    return {name for name in _NAME.findall(_blank_strings(expr)) if ":" in name}


def _selectors(expr: str) -> list[tuple[str | None, set[str]]]:
    """(metric name or None, label names matched) for every `{...}` selector."""
    return [(name or None, set(_MATCHER.findall(body))) for name, body in _SELECTOR.findall(_blank_strings(expr))]


def _grouping_labels(expr: str) -> set[str]:
    found = set()
    for group in _GROUPING.findall(_blank_strings(expr)):
        found.update(label.strip() for label in group.split(",") if label.strip())
    return found


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Series name → label names, as one scrape of /metrics would give them to Prometheus."""
    metrics = ServiceMetrics()
    # prometheus-client exposes a labelled series only once it has been touched, so every instrument
    # gets an observation here; an untouched one would look as if it did not exist.
    metrics.observe_batch(BatchObservation("qa", "pruned", 2, 0.01, [0.001, 0.002], [100, 200]))
    metrics.observe_request("qa", "pruned", 200, 0.02)
    metrics.observe_request("summarize", "dense", 503, 0.001)
    metrics.reject("summarize", "dense", "queue_full")
    metrics.observe_shadow("qa", "pruned", "dense", {"span_exact_match": 1.0, "answer_f1": 0.9})
    metrics.drop_shadow("qa", "pruned", "in_flight_cap")
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


@pytest.fixture(scope="module")
def families() -> dict[str, str]:
    """Metric family name → type, from the registry itself rather than from the exposition."""
    return {family.name: family.type for family in ServiceMetrics().registry.collect()}


@pytest.fixture(scope="module")
def service_monitor() -> dict:
    (document,) = yaml.safe_load_all(SERVICE_MONITOR.read_text())
    return document


@pytest.fixture(scope="module")
def rules_doc() -> dict:
    (document,) = yaml.safe_load_all(RULES.read_text())
    return document


@pytest.fixture(scope="module")
def rules(rules_doc) -> list[dict]:
    return [rule for group in rules_doc["spec"]["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def recorded(rules) -> dict[str, str]:
    """Recorded series name → the expression that defines it."""
    return {rule["record"]: rule["expr"] for rule in rules if "record" in rule}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _dashboard_targets(dashboard: dict) -> list[tuple[str, dict]]:
    return [(panel["title"], target) for panel in dashboard["panels"] for target in panel.get("targets", [])]


def _variable_queries(dashboard: dict) -> list[tuple[str, str]]:
    queries = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        queries.append((f"variable {variable['name']}", query["query"] if isinstance(query, dict) else query))
    return queries


@pytest.fixture(scope="module")
def all_exprs(rules, dashboard) -> list[tuple[str, str]]:
    """(where, PromQL) for every expression in the rule file and the dashboard."""
    exprs = [(rule.get("record") or rule["alert"], rule["expr"]) for rule in rules]
    exprs += [(f"panel {title!r} {target['refId']}", target["expr"]) for title, target in _dashboard_targets(dashboard)]
    return exprs + _variable_queries(dashboard)


# ------------------------------------------------------------------------------- the parser itself


def test_the_promql_scan_finds_names_labels_and_ignores_string_contents():
    expr = (
        'sum by (le, variant) (rate(blockserve_x_bucket{task="$task", status=~"5.."}[5m]))'
        ' / ignoring(reason) task_variant:blockserve_x:p99_5m + up{job="blockserve_not_a_metric"}'
    )
    assert _series_names(expr) == {"blockserve_x_bucket"}
    assert _recorded_names(expr) == {"task_variant:blockserve_x:p99_5m"}
    assert _selectors(expr) == [("blockserve_x_bucket", {"task", "status"}), ("up", {"job"})]
    assert _grouping_labels(expr) == {"le", "variant", "reason"}


def test_every_instrument_is_exposed_by_the_fixture(exported, families):
    # Guards the fixture: a family without samples would make any name check about it vacuous.
    for name, kind in families.items():
        suffix = {"counter": "_total", "histogram": "_count"}[kind]
        assert name + suffix in exported, name


# -------------------------------------------------------------------------- names against the service


def test_every_metric_referenced_is_a_series_the_service_exports(all_exprs, exported):
    referenced = 0
    for where, expr in all_exprs:
        names = _series_names(expr)
        referenced += len(names)
        missing = names - exported.keys()
        assert not missing, f"{where}: {sorted(missing)} not exported by service.metrics ({expr!r})"
    assert referenced  # an empty scan would pass the loop vacuously


def test_metrics_named_in_alert_texts_and_panel_descriptions_exist(rules, dashboard, exported):
    texts = [(rule["alert"], text) for rule in rules if "alert" in rule for text in rule["annotations"].values()]
    texts += [(panel["title"], panel.get("description", "")) for panel in dashboard["panels"]]
    for where, text in texts:
        missing = {name for name in _NAME.findall(text) if name.startswith(_PREFIX)} - exported.keys()
        assert not missing, f"{where}: mentions {sorted(missing)}"


def test_every_dashboard_query_reads_a_blockserve_metric(dashboard):
    for where, expr in [(t, x["expr"]) for t, x in _dashboard_targets(dashboard)] + _variable_queries(dashboard):
        assert _series_names(expr), f"{where}: no blockserve_* series in {expr!r}"


def test_the_dashboard_shows_every_instrument(dashboard, families):
    shown = set().union(*(_series_names(target["expr"]) for _, target in _dashboard_targets(dashboard)))
    bases = {re.sub(r"_(bucket|sum|count|total)$", "", name) for name in shown}
    assert set(families) <= bases, f"no panel for {sorted(set(families) - bases)}"


def test_recorded_series_are_defined_and_named_after_real_metrics(all_exprs, recorded, families):
    for where, expr in all_exprs:
        undefined = _recorded_names(expr) - recorded.keys()
        assert not undefined, f"{where}: {sorted(undefined)} is not recorded in {RULES.name}"
    for name, expr in recorded.items():
        level, metric, _operation = name.split(":")
        assert metric in families, f"{name}: {metric} is not a metric family of service.metrics"
        assert set(level.split("_")) == _grouping_labels(expr) - {"le"}, f"{name}: level does not match by (...)"
        assert any(series.startswith(metric) for series in _series_names(expr)), name


# ------------------------------------------------------------------------- labels against the service


def test_matchers_use_labels_the_selected_series_carry(all_exprs, exported, recorded):
    for where, expr in all_exprs:
        for name, labels in _selectors(expr):
            if name in exported:
                carried = exported[name]
            elif name in recorded:
                carried = _grouping_labels(recorded[name]) - {"le"}
            else:
                # Only Prometheus's own target health series may appear next to ours.
                assert name == "up", f"{where}: selector on unknown series {name!r}"
                continue
            assert labels <= carried, f"{where}: {name} has no label {sorted(labels - carried)}"


def test_grouping_and_variable_labels_exist(all_exprs, exported):
    every_label = set().union(*exported.values())
    assert {"task", "variant", "status", "reason", "le"} <= every_label
    for where, expr in all_exprs:
        unknown = _grouping_labels(expr) - every_label
        assert not unknown, f"{where}: grouping by {sorted(unknown)}, which no blockserve series carries"
        for metric, label in _LABEL_VALUES.findall(expr):
            assert label in (exported[metric] if metric else every_label), f"{where}: label_values on {label!r}"


def test_legends_and_alert_texts_name_labels_the_result_keeps(dashboard, rules, recorded):
    for title, target in _dashboard_targets(dashboard):
        legend = set(_LEGEND_LABEL.findall(target.get("legendFormat", "")))
        kept = _grouping_labels(target["expr"])
        assert legend <= kept, f"panel {title!r}: legend uses {sorted(legend - kept)}, lost by the aggregation"
    for rule in rules:
        if "alert" not in rule:
            continue
        used = set().union(*(_TEMPLATE_LABEL.findall(text) for text in rule["annotations"].values()))
        kept = set().union(*(_grouping_labels(recorded[name]) for name in _recorded_names(rule["expr"])))
        assert used <= kept - {"le"}, f"{rule['alert']}: annotations use {sorted(used - kept)}"


def test_quantiles_aggregate_buckets_and_keep_le(all_exprs):
    # Dropping `le` in the inner sum, or feeding _sum/_count to histogram_quantile, yields NaN or
    # nonsense without any error from Prometheus.
    for where, expr in all_exprs:
        if "histogram_quantile" not in expr:
            continue
        assert all(name.endswith("_bucket") for name in _series_names(expr)), where
        for group in _GROUPING.findall(expr):
            assert "le" in {label.strip() for label in group.split(",")}, f"{where}: by ({group}) drops le"


# --------------------------------------------------------------------------------- ServiceMonitor


def test_service_monitor_scrapes_metrics_on_the_serve_port_of_one_pod(service_monitor):
    assert service_monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert service_monitor["kind"] == "ServiceMonitor"
    spec = service_monitor["spec"]
    # KubeRay labels the serve Service of RayService <name> with ray.io/serve=<name>-serve.
    assert spec["selector"]["matchLabels"] == {"ray.io/serve": "blockserve-serve"}
    assert spec.get("namespaceSelector", {}).get("any") is not True
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] == "serve"
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s"
    # Each Pod behind the Service returns the whole registry; keeping one avoids N copies of every series.
    (keep,) = [r for r in endpoint["relabelings"] if r["action"] == "keep"]
    assert keep["sourceLabels"] == ["__meta_kubernetes_pod_label_ray_io_node_type"]
    assert keep["regex"] == "head"


@pytest.mark.parametrize("config", ["serve.yaml", "serve-gpu.yaml"])
def test_serve_configs_listen_on_the_scraped_port(config):
    assert yaml.safe_load((ROOT / "deploy" / config).read_text())["http_options"]["port"] == 8000


def test_rayservice_gives_the_serve_service_its_port_and_name(service_monitor):
    rayservice = yaml.safe_load(RAYSERVICE.read_text())
    name = rayservice["metadata"]["name"]
    assert service_monitor["spec"]["selector"]["matchLabels"]["ray.io/serve"] == f"{name}-serve"
    (head,) = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][:1]
    ports = {port.get("name"): port["containerPort"] for port in head.get("ports", [])}
    assert ports["serve"] == yaml.safe_load(rayservice["spec"]["serveConfigV2"])["http_options"]["port"]


# --------------------------------------------------------------------------------- PrometheusRule


def test_rule_file_structure(rules_doc, rules):
    assert rules_doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert rules_doc["kind"] == "PrometheusRule"
    assert rules_doc["spec"]["groups"] and all(
        group["name"] and group["rules"] for group in rules_doc["spec"]["groups"]
    )
    alerts = [rule for rule in rules if "alert" in rule]
    assert len({rule["alert"] for rule in alerts}) == len(alerts)
    for rule in rules:
        assert ("record" in rule) != ("alert" in rule), rule
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), rule
    for alert in alerts:
        assert re.fullmatch(r"\d+[smh]", alert["for"]), alert["alert"]
        assert alert["labels"]["severity"] in {"info", "warning", "critical"}, alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], alert["alert"]


def test_latency_recordings_and_slo_alert(rules, recorded):
    for quantile in ("50", "95", "99"):
        expr = recorded[f"task_variant:blockserve_request_duration_seconds:p{quantile}_5m"]
        assert f"histogram_quantile(0.{quantile}," in expr.replace(" ", "")
        assert _grouping_labels(expr) == {"le", "task", "variant"}
        assert _series_names(expr) == {"blockserve_request_duration_seconds_bucket"}
    (slo,) = [rule for rule in rules if rule.get("alert") == "BlockserveP99LatencySLO"]
    assert _recorded_names(slo["expr"]) == {"task_variant:blockserve_request_duration_seconds:p99_5m"}
    assert slo["for"] == "10m"
    thresholds = {task: float(value) for task, value in re.findall(r'task="(\w+)"\}\s*>\s*([\d.]+)', slo["expr"])}
    assert thresholds == {"qa": 0.5, "summarize": 5.0}
    # On a bucket boundary the interpolated quantile crosses the threshold exactly when the bucket count does.
    assert set(thresholds.values()) <= set(LATENCY_BUCKETS)


def test_error_ratio_alert_counts_5xx_of_all_requests(rules, recorded):
    (alert,) = [rule for rule in rules if rule.get("alert") == "BlockserveHighErrorRatio"]
    (ratio,) = _recorded_names(alert["expr"])
    numerator, denominator = recorded[ratio].split("\n/\n")
    assert 'blockserve_requests_total{status=~"5.."}' in numerator
    assert _series_names(denominator) == {"blockserve_requests_total"} and "status" not in denominator


def test_metrics_down_alert_watches_the_scrape_job_of_the_serve_service(rules, service_monitor):
    (alert,) = [rule for rule in rules if rule.get("alert") == "BlockserveMetricsDown"]
    # prometheus-operator names the job after the Service: <ray.io/serve label value>-svc.
    service = service_monitor["spec"]["selector"]["matchLabels"]["ray.io/serve"] + "-svc"
    assert f'up{{job="{service}"}}' in alert["expr"]


# -------------------------------------------------------------------------------------- dashboard


def test_dashboard_structure_and_variables(dashboard):
    assert dashboard["schemaVersion"] >= 39
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    task = variables["task"]
    assert task["type"] == "query" and task["datasource"]["uid"] == "${datasource}"
    assert task["definition"] == task["query"]["query"]  # Grafana runs the latter, shows the former
    # One task at a time: a quantile or a ratio over QA and summarization together means nothing.
    assert not task["multi"] and not task["includeAll"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys(), panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_dashboard_panels_compare_variants_of_the_selected_task(dashboard):
    titles = {panel["title"].lower(): panel for panel in dashboard["panels"]}
    for wanted in ("p50", "p95", "p99", "throughput", "batch size", "queue wait", "inference", "rejections"):
        assert any(wanted in title for title in titles), wanted
    ratio = titles["pruned / dense p50 ratio"]
    assert ratio["type"] == "stat"
    (target,) = ratio["targets"]
    assert 'variant="pruned"' in target["expr"] and 'variant="dense"' in target["expr"]
    for title, target in _dashboard_targets(dashboard):
        for name, labels in _selectors(target["expr"]):
            assert "task" in labels, f"panel {title!r}: {name} ignores the task variable"
        if title != "pruned / dense p50 ratio":
            assert "variant" in _grouping_labels(target["expr"]), f"panel {title!r} does not split by variant"
