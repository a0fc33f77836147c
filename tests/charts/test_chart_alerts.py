"""The optional PrometheusRule: every alert fires on the series it reads, stays quiet on a healthy
release (and on another release's trouble), reads only metrics that exist, and passes promtool.

promtool (Debian: `apt-get install prometheus`; .ci/run installs it when missing) evaluates the
rendered rules with `promtool test rules`.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from services.metrics import METRIC_NAMES
from tests.charts.helpers import BENTOML_METRICS, EXAMPLES, MODELS, NAMESPACE, base_metric, effective_values, promql_metric_names

KUBE_STATE_METRICS = {  # kube-state-metrics series the rules read
    "kube_horizontalpodautoscaler_status_current_replicas",
    "kube_horizontalpodautoscaler_spec_max_replicas",
    "kube_deployment_status_replicas_unavailable",
}
ALERTS = ("RoostErrorRatioHigh", "RoostRejectionRatioHigh", "RoostLatencyP99AboveTarget", "RoostInFlightNearLimit",
          "RoostAutoscalerAtMax", "RoostVersionSkew", "RoostPodsNotReady")


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.fail("promtool is missing: apt-get install prometheus (Debian ships promtool in it; .ci/run does this)")
    return path


def rule_of(render, *args: str) -> dict:
    [rule] = render(*args).kind("PrometheusRule")
    return rule


def test_alerts_are_off_by_default_and_on_in_the_all_models_example(render_config):
    assert render_config("default").kind("PrometheusRule") == []
    rule = render_config("all-models").kind("PrometheusRule")[0]
    assert [g["name"] for g in rule["spec"]["groups"]] == [f"roost-{m}" for m in sorted(MODELS)]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"  # kube-prometheus-stack's ruleSelector
    for group in rule["spec"]["groups"]:
        assert [r["alert"] for r in group["rules"]] == list(ALERTS)


def test_alerts_need_the_service_monitor(helm):
    from tests.charts.helpers import CHART

    result = helm("template", "roost", str(CHART), "--set", "alerts.enabled=true", check=False)
    assert result.returncode != 0 and "metrics.serviceMonitor.enabled=true" in result.stderr


@pytest.mark.parametrize("config", ["all-models", "keda", "gpu", "custom-autoscaling"])
def test_alert_expressions_read_only_metrics_that_exist(render, config):
    rule = rule_of(render, "-f", str(EXAMPLES[config]), "--set", "alerts.enabled=true")
    used = {base_metric(n) for g in rule["spec"]["groups"] for r in g["rules"] for n in promql_metric_names(r["expr"])}
    assert used <= set(METRIC_NAMES) | set(BENTOML_METRICS) | KUBE_STATE_METRICS, used - set(METRIC_NAMES)
    for g in rule["spec"]["groups"]:
        svc = f"roost-{g['name'].removeprefix('roost-')}"
        for r in g["rules"]:
            if "roost_" in r["expr"] or "bentoml_" in r["expr"]:  # scoped to this release's Service
                assert f'service="{svc}"' in r["expr"] and f'namespace="{NAMESPACE}"' in r["expr"], r["expr"]


def test_the_outcomes_the_rules_read_are_the_ones_the_service_counts():
    from services import errors

    outcomes = {getattr(c, "outcome", None) for c in vars(errors).values() if isinstance(c, type)}
    assert {"error", "rejected"} <= outcomes


def test_keda_models_alert_on_the_hpa_keda_makes(render):
    rule = rule_of(render, "-f", str(EXAMPLES["keda"]), "--set", "alerts.enabled=true")
    [bird] = [g for g in rule["spec"]["groups"] if g["name"] == "roost-bird"]
    [at_max] = [r for r in bird["rules"] if r["alert"] == "RoostAutoscalerAtMax"]
    assert 'horizontalpodautoscaler="keda-hpa-roost-bird"' in at_max["expr"]


def series(name: str, labels: dict, values: str) -> dict:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def inputs(model: str, release_labels: dict, *, healthy: bool) -> list[dict]:
    """One hour of a model's series at 1m steps: a release in trouble on every alert, or a healthy one."""
    sel = {**release_labels, "model": model}
    ns = release_labels["namespace"]
    svc = release_labels["service"]
    bad = not healthy
    out = [
        series("roost_requests_total", {**sel, "protocol": "http", "outcome": "ok"}, "0+600x60"),
        series("roost_requests_total", {**sel, "protocol": "http", "outcome": "error"}, f"0+{60 if bad else 1}x60"),
        series("roost_requests_total", {**sel, "protocol": "http", "outcome": "rejected"}, f"0+{120 if bad else 3}x60"),
        series("roost_requests_total", {**sel, "protocol": "oip_grpc", "outcome": "client_error"}, "0+5x60"),
        # p99: in (0.05, 0.1] when healthy, in (5, 10] when not: every model's target lies between
        series("bentoml_service_request_duration_seconds_bucket", {**sel, "le": "0.05"}, f"0+{50 if bad else 950}x60"),
        series("bentoml_service_request_duration_seconds_bucket", {**sel, "le": "0.1"}, "0+1000x60" if not bad else "0+90x60"),
        series("bentoml_service_request_duration_seconds_bucket", {**sel, "le": "5"}, "0+1000x60" if not bad else "0+900x60"),
        series("bentoml_service_request_duration_seconds_bucket", {**sel, "le": "10"}, "0+1000x60"),
        series("bentoml_service_request_duration_seconds_bucket", {**sel, "le": "+Inf"}, "0+1000x60"),
        # fast probes must not pull the p99 under the target
        *(series("bentoml_service_request_duration_seconds_bucket", {**sel, "endpoint": "/readyz", "le": le}, f"0+{100000 if bad else 0}x60")
          for le in ("0.05", "0.1", "5", "10", "+Inf")),
        series("roost_requests_in_flight", {**sel, "pod": f"{svc}-a-1"}, "1000x60" if bad else "1x60"),
        series("roost_requests_in_flight", {**sel, "pod": f"{svc}-a-2"}, "0x60"),
        series("roost_model_info", {**sel, "pod": f"{svc}-a-1", "version": "20261101-120000"}, "1x60"),
        series("kube_horizontalpodautoscaler_status_current_replicas", {"namespace": ns, "horizontalpodautoscaler": svc}, f"{4 if bad else 2}x60"),
        series("kube_horizontalpodautoscaler_spec_max_replicas", {"namespace": ns, "horizontalpodautoscaler": svc}, "4x60"),
        series("kube_deployment_status_replicas_unavailable", {"namespace": ns, "deployment": svc}, f"{1 if bad else 0}x60"),
    ]
    if bad:
        out.append(series("roost_model_info", {**sel, "pod": f"{svc}-a-2", "version": "20261202-090000"}, "1x60"))
    return out


def expected_alert(rule: dict, svc: str) -> dict:
    labels = dict(rule["labels"])
    name = rule["alert"]
    if name == "RoostInFlightNearLimit":
        labels["pod"] = f"{svc}-a-1"
    elif name == "RoostAutoscalerAtMax":
        labels.update(namespace=NAMESPACE, horizontalpodautoscaler=svc)
    elif name == "RoostPodsNotReady":
        labels.update(namespace=NAMESPACE, deployment=svc)
    annotations = {k: v.replace("{{ $labels.pod }}", labels.get("pod", "")) for k, v in rule["annotations"].items()}
    return {"exp_labels": labels, "exp_annotations": annotations}


def run_promtool(promtool: str, tmp_path, groups: list[dict], tests: list[dict]) -> subprocess.CompletedProcess:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}))
    check = subprocess.run([promtool, "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    return subprocess.run([promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_every_alert_fires_on_its_series_and_stays_quiet_when_healthy(render_config, promtool, tmp_path):
    rule = render_config("all-models").kind("PrometheusRule")[0]
    groups = rule["spec"]["groups"]
    values = effective_values("all-models")
    tests = []
    for group in groups:
        model = group["name"].removeprefix("roost-")
        svc = f"roost-{model}"
        mine = {"namespace": NAMESPACE, "service": svc, "job": svc}
        # another release's pods in trouble, in the same namespace: must not page this release
        other = {"namespace": NAMESPACE, "service": f"other-{model}", "job": f"other-{model}"}
        assert values["models"][model]["latencyTargetSeconds"] > 0.1
        assert 1000 >= values["models"][model]["maxInFlight"] >= 2
        fired = {r["alert"]: [expected_alert(r, svc)] for r in group["rules"]}
        tests.append({"interval": "1m", "name": f"{model}: trouble",
                      "input_series": inputs(model, mine, healthy=False),
                      "alert_rule_test": [{"eval_time": "40m", "alertname": a, "exp_alerts": e} for a, e in fired.items()]})
        tests.append({"interval": "1m", "name": f"{model}: healthy, another release in trouble",
                      "input_series": inputs(model, mine, healthy=True) + inputs(model, other, healthy=False),
                      "alert_rule_test": [{"eval_time": "40m", "alertname": a, "exp_alerts": []} for a in fired]})
    result = run_promtool(promtool, tmp_path, groups, tests)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "SUCCESS" in result.stdout


def test_promtool_catches_a_silent_alert(render_config, promtool, tmp_path):
    """Guard the guard: expecting an alert on healthy series fails."""
    group = render_config("all-models").kind("PrometheusRule")[0]["spec"]["groups"][0]
    model = group["name"].removeprefix("roost-")
    mine = {"namespace": NAMESPACE, "service": f"roost-{model}", "job": f"roost-{model}"}
    tests = [{"interval": "1m", "input_series": inputs(model, mine, healthy=True),
              "alert_rule_test": [{"eval_time": "40m", "alertname": "RoostErrorRatioHigh",
                                   "exp_alerts": [expected_alert(group["rules"][0], f"roost-{model}")]}]}]
    assert run_promtool(promtool, tmp_path, [group], tests).returncode != 0


def test_every_dashboard_query_parses_as_promql(render_config, promtool, tmp_path):
    """Grafana's variables filled in, each panel query is a recording rule promtool must accept."""
    import json

    [cm] = render_config("default").kind("ConfigMap")
    exprs = [t["expr"] for p in json.loads(cm["data"]["roost.json"])["panels"] for t in p["targets"]]
    fill = {"$__rate_interval": "5m", "$namespace": ".*", "$model": ".*"}
    rules = []
    for i, e in enumerate(exprs):
        for k, v in fill.items():
            e = e.replace(k, v)
        rules.append({"record": f"roost:panel_{i}", "expr": e})
    (tmp_path / "panels.yaml").write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", "panels.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboards_protocol_latency_and_gpu_queries_compute_on_their_series(render_config, promtool, tmp_path):
    """promtool evaluates the new panels' queries on made-up series: p50/p99 per protocol from
    roost_request_seconds, and dcgm-exporter's GPU series joined to Roost's pods only (another pod's
    GPU, and an idle GPU with empty pod/namespace labels, are left out)."""
    from tests.charts.helpers import dashboard_panels

    panels = dashboard_panels(render_config("default"))
    fill = {"$__rate_interval": "5m", "$namespace": ".*", "$model": ".*"}

    def exprs(fragment: str) -> list[str]:
        [panel] = [p for p in panels if fragment in p["title"]]
        out = []
        for t in panel["targets"]:
            e = t["expr"]
            for k, v in fill.items():
                e = e.replace(k, v)
            out.append(e)
        return out

    pod = {"namespace": NAMESPACE, "pod": "roost-bird-7d9f-abcde", "job": "roost-bird", "model": "bird"}
    inputs = [series("roost_model_info", {**pod, "version": "v1", "runtime": "onnx", "device": "cuda"}, "1x60")]
    # http: every request in (0.05, 0.1]; oip_grpc: every one in (0, 0.0005]
    for protocol, counts in (("http", {"0.0005": 0, "0.05": 0, "0.1": 100, "+Inf": 100}),
                             ("oip_grpc", {"0.0005": 100, "0.05": 100, "0.1": 100, "+Inf": 100})):
        inputs += [series("roost_request_seconds_bucket", {**pod, "protocol": protocol, "le": le}, f"0+{n}x60")
                   for le, n in counts.items()]
    exporter = {"job": "nvidia-dcgm-exporter", "instance": "10.0.0.9:9400", "Hostname": "gpu-node-1"}
    for metric, mine, theirs in (("DCGM_FI_DEV_GPU_UTIL", 42, 90), ("DCGM_FI_DEV_FB_USED", 1536, 9000)):
        inputs += [
            series(metric, {**exporter, "gpu": "0", "UUID": "GPU-a", "namespace": NAMESPACE, "pod": pod["pod"], "container": "bird"}, f"{mine}x60"),
            series(metric, {**exporter, "gpu": "1", "UUID": "GPU-b", "namespace": NAMESPACE, "pod": "someone-else-0", "container": "x"}, f"{theirs}x60"),
            series(metric, {**exporter, "gpu": "2", "UUID": "GPU-c", "namespace": "", "pod": "", "container": ""}, "0x60"),
        ]
    [p50, p99] = exprs("Request latency by protocol")
    [util, _mig] = exprs("GPU utilisation")
    [memory] = exprs("GPU memory")
    at = {"model": "bird", "pod": pod["pod"], "gpu": "0"}
    p50, p99 = (f"round({e}, 0.000001)" for e in (p50, p99))  # rates of N/60 per second: compare to 1e-6
    checks = [
        (p50, [{"labels": '{model="bird",protocol="http"}', "value": 0.075},
               {"labels": '{model="bird",protocol="oip_grpc"}', "value": 0.00025}]),
        (p99, [{"labels": '{model="bird",protocol="http"}', "value": 0.0995},
               {"labels": '{model="bird",protocol="oip_grpc"}', "value": 0.000495}]),
        (util, [{"labels": "{" + ",".join(f'{k}="{v}"' for k, v in at.items()) + "}", "value": 42}]),
        (memory, [{"labels": "{" + ",".join(f'{k}="{v}"' for k, v in at.items()) + "}", "value": 1536}]),
    ]
    tests = [{"interval": "1m", "input_series": inputs,
              "promql_expr_test": [{"expr": e, "eval_time": "30m", "exp_samples": s} for e, s in checks]}]
    rules = [{"record": f"roost:panel_{i}", "expr": e} for i, (e, _) in enumerate(checks)]
    result = run_promtool(promtool, tmp_path, [{"name": "panels", "rules": rules}], tests)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "SUCCESS" in result.stdout
