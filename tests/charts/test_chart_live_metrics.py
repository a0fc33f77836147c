"""The metrics the chart scales and alerts on are really on a live server's /metrics."""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys

import httpx
import pytest
import yaml
from PIL import Image

from tests.charts.helpers import BENTOML_METRICS, MODELS, ROOT, base_metric, promql_metric_names

pytestmark = pytest.mark.slow


def chart_autoscaling_metrics(render_config) -> set[str]:
    """Every metric an HPA, a ScaledObject or the prometheus-adapter rules of k8s/ refer to."""
    names = set()
    for config in ("default", "custom-autoscaling", "keda", "gpu"):
        rendered = render_config(config)
        for hpa in rendered.kind("HorizontalPodAutoscaler"):
            names |= {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
        for so in rendered.kind("ScaledObject"):
            for trigger in so["spec"]["triggers"]:
                names |= promql_metric_names(trigger["metadata"]["query"])
    adapter = yaml.safe_load((ROOT / "k8s" / "prometheus-adapter" / "values.yaml").read_text())
    for rule in adapter["rules"]["custom"]:
        names |= promql_metric_names(rule["seriesQuery"])
    return names


def scraped_series(text: str) -> dict[str, list[str]]:
    """metric name -> its sample lines (label sets), from a Prometheus text exposition."""
    series: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s", line)
        if m:
            series.setdefault(base_metric(m.group(1)), []).append(m.group(2) or "")
    return series


@pytest.fixture(scope="module")
def bird_server(server_of):
    return server_of("bird")


def test_autoscaling_metrics_are_on_a_live_metrics_scrape(bird_server, render_config):
    wanted = chart_autoscaling_metrics(render_config)
    assert "roost_requests_in_flight" in wanted
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 120, 40)).save(png, format="PNG")
    response = httpx.post(f"{bird_server.url}/predict_batch", json={"images": [base64.b64encode(png.getvalue()).decode()]}, timeout=60)
    assert response.status_code == 200, response.text
    series = scraped_series(bird_server.metrics())
    for name in wanted:
        assert name in series, f"{name} is not on /metrics"
        assert any('model="bird"' in labels for labels in series[name]), f"{name} has no model=\"bird\" series"


@pytest.mark.parametrize("model", MODELS)
def test_the_helm_test_script_passes_against_a_live_server(server_of, render_config, model, tmp_path):
    """Run each model's `helm test` Pod script and environment (values.yaml `test:`: path and body)
    against that model's real server; a body the route can't parse (tabular's flat row, collab's
    bare list, once) fails here."""
    [pod] = [p for p in render_config("all-models").kind("Pod") if p["metadata"]["labels"]["app.kubernetes.io/component"] == model]
    [container] = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["ROOST_TEST_PATH"] and env["ROOST_TEST_BODY"]
    env["ROOST_URL"] = server_of(model).url
    result = subprocess.run([sys.executable, "-c", container["args"][0]], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("ok")


def test_dashboard_metrics_exist_on_a_live_server_after_traffic(bird_server, render_config):
    """Series that exist after ordinary traffic (counters for rejections appear only on rejection)."""
    series = scraped_series(bird_server.metrics())
    for name in ("roost_stage_seconds", "roost_batch_size", "roost_predictions_total", "roost_requests_total", "roost_request_seconds",
                 "roost_model_info", "bentoml_service_request_duration_seconds", "bentoml_service_request_total"):
        assert name in series, name
    assert set(BENTOML_METRICS) & set(series)


def test_alert_metrics_are_on_a_live_scrape_with_the_labels_the_rules_use(bird_server, render_config):
    """The PrometheusRule's service-side series (roost_*, bentoml_*) exist after ordinary traffic, and
    roost_requests_total carries the outcome label the ratio alerts select on."""
    [rule] = render_config("all-models").kind("PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    wanted = {base_metric(n) for e in exprs for n in promql_metric_names(e) if n.startswith(("roost_", "bentoml_"))}
    assert {"roost_requests_total", "roost_requests_in_flight", "roost_model_info", "bentoml_service_request_duration_seconds"} <= wanted
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 120, 40)).save(png, format="PNG")
    assert httpx.post(f"{bird_server.url}/predict_batch", json={"images": [base64.b64encode(png.getvalue()).decode()]}, timeout=60).status_code == 200
    text = bird_server.metrics()
    series = scraped_series(text)
    for name in wanted:
        assert name in series, f"{name} is not on /metrics"
    assert any('outcome="ok"' in labels for labels in series["roost_requests_total"])
    assert any('version="' in labels for labels in series["roost_model_info"])
    assert any('le="' in labels for labels in series["bentoml_service_request_duration_seconds"])
