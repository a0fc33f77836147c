"""The chart refuses values that would break serving, and the knobs of issue 14 reach the render."""

from __future__ import annotations

import pytest

from tests.charts.helpers import CHART, CONFIGS, MODELS, effective_values


def fails(helm, *args: str) -> str:
    result = helm("template", "roost", str(CHART), *args, check=False)
    assert result.returncode != 0, f"rendered: {args}"
    assert "values don't meet the specifications of the schema" not in result.stderr, result.stderr  # the chart's own `fail`
    return result.stderr


@pytest.mark.parametrize("model", MODELS)
def test_every_model_default_leaves_its_deadline_after_the_preStop_sleep(model):
    """segment's 60 s deadline once broke this with the chart-wide 45 s grace period."""
    values = effective_values("default")
    m = values["models"][model]
    grace = m.get("terminationGracePeriodSeconds") or values["shutdown"]["terminationGracePeriodSeconds"]
    assert grace > values["shutdown"]["preStopSleepSeconds"] + m["timeoutSeconds"]


@pytest.mark.parametrize("model", MODELS)
def test_a_grace_period_too_short_for_the_deadline_fails(helm, model):
    err = fails(helm, "--set", f"models.{model}.enabled=true,models.{model}.terminationGracePeriodSeconds=20",
                "--set", f"models.{model}.timeoutSeconds=10")  # 20 <= 10 + 10
    assert f"models.{model}" in err and "terminationGracePeriodSeconds" in err
    err = fails(helm, "--set", f"models.{model}.enabled=true,shutdown.terminationGracePeriodSeconds=15,models.{model}.terminationGracePeriodSeconds=null",
                "--set", f"models.{model}.timeoutSeconds=5")  # the chart-wide value, 15 <= 10 + 5
    assert "terminationGracePeriodSeconds" in err


def test_a_per_model_grace_period_is_used(render):
    rendered = render("--set", "models.segment.enabled=true,models.bird.terminationGracePeriodSeconds=41")
    graces = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
              for d in rendered.kind("Deployment")}
    assert graces == {"bird": 41, "segment": 75}


def test_min_replicas_above_max_fails(helm):
    assert "minReplicas (5) > maxReplicas (4)" in fails(helm, "--set", "models.bird.autoscaling.minReplicas=5")
    # autoscaling off: the bounds are unused and not checked
    result = helm("template", "roost", str(CHART), "--set", "models.bird.autoscaling.enabled=false,models.bird.autoscaling.minReplicas=5", check=False)
    assert result.returncode == 0, result.stderr


def test_cuda_without_a_gpu_fails(helm, render):
    assert "device=cuda with gpu: 0" in fails(helm, "--set", "models.bird.device=cuda")
    assert render("--set", "models.bird.device=cuda,models.bird.gpu=1").kind("Deployment")


@pytest.mark.parametrize("config", CONFIGS)
def test_helm_test_pods_use_the_image_pull_secrets(render, config):
    from tests.charts.helpers import config_args

    rendered = render(*config_args(config), "--set", "imagePullSecrets[0].name=regcred")
    pods = rendered.pod_specs()
    assert any(name.startswith("Pod/") for name, _ in pods)
    for name, spec in pods:
        assert spec.get("imagePullSecrets") == [{"name": "regcred"}], name


@pytest.mark.parametrize("config", CONFIGS)
def test_no_deployment_sets_replicas_while_an_autoscaler_owns_them(render_config, config):
    values = effective_values(config)
    for dep in render_config(config).kind("Deployment"):
        m = values["models"][dep["metadata"]["labels"]["app.kubernetes.io/component"]]
        if dep["metadata"]["labels"]["roost.dev/track"] == "canary":
            assert dep["spec"]["replicas"] == m["canary"]["replicas"]  # its share of traffic: no autoscaler
            continue
        assert ("replicas" in dep["spec"]) == (not m["autoscaling"]["enabled"])


def test_external_autoscaling_renders_no_autoscaler_and_no_replicas(render):
    rendered = render("--set", "models.bird.autoscaling.mode=external")
    assert rendered.kind("HorizontalPodAutoscaler") == [] and rendered.kind("ScaledObject") == []
    assert "replicas" not in rendered.kind("Deployment")[0]["spec"]


@pytest.mark.parametrize("config", [c for c in CONFIGS if c != "default"])
def test_examples_service_monitors_carry_the_kube_prometheus_stack_release_label(render_config, config):
    """kube-prometheus-stack's Prometheus selects ServiceMonitors by release=<its release>."""
    for sm in render_config(config).kind("ServiceMonitor"):
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"


@pytest.mark.parametrize("config", CONFIGS)
def test_examples_that_autoscale_on_prometheus_render_a_service_monitor_without_a_cluster(render_config, config):
    """`helm template` sees no CRD: the examples that need scraping switch the ServiceMonitor on explicitly."""
    values = effective_values(config)
    rendered = render_config(config)
    needs = [m for m in MODELS if values["models"][m]["enabled"] and values["models"][m]["autoscaling"]["enabled"]
             and values["models"][m]["autoscaling"]["mode"] in ("custom", "keda")]
    monitored = {sm["metadata"]["labels"]["app.kubernetes.io/component"] for sm in rendered.kind("ServiceMonitor")}
    assert set(needs) <= monitored


def test_keda_without_a_service_monitor_fails_and_a_custom_query_is_accepted(helm, render):
    err = fails(helm, "--set", "models.bird.autoscaling.mode=keda")
    assert "metrics.serviceMonitor.enabled=true" in err
    rendered = render("--set", "models.bird.autoscaling.mode=keda", "--set-string", "models.bird.autoscaling.keda.query=sum(roost_requests_in_flight)")
    assert rendered.kind("ScaledObject")[0]["spec"]["triggers"][0]["metadata"]["query"] == "sum(roost_requests_in_flight)"


def test_gpu_resource_name_runtime_class_and_strategy_per_model(render):
    rendered = render("--set", "models.segment.enabled=true,models.bird.gpu=1,models.bird.gpuResourceName=nvidia.com/mig-1g.10gb",
                      "--set", "models.bird.runtimeClassName=nvidia",
                      "--set-json", 'models.bird.strategy={"type":"RollingUpdate","rollingUpdate":{"maxSurge":0,"maxUnavailable":1}}')
    deps = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in rendered.kind("Deployment")}
    bird = deps["bird"]["spec"]
    res = bird["template"]["spec"]["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/mig-1g.10gb"] == 1 and "nvidia.com/gpu" not in res["limits"]
    assert bird["template"]["spec"]["runtimeClassName"] == "nvidia"
    assert bird["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    seg = deps["segment"]["spec"]
    assert seg["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert "runtimeClassName" not in seg["template"]["spec"]
    recreate = render("--set", "strategy.type=Recreate,strategy.rollingUpdate=null").kind("Deployment")[0]["spec"]["strategy"]
    assert recreate == {"type": "Recreate"}


@pytest.mark.parametrize("model", MODELS)
def test_max_in_flight_defaults_are_the_registry_and_reach_the_environment(render, model):
    """The alert's in-flight limit is the one the service enforces (services/registry.py)."""
    from services.registry import MODELS as REGISTRY

    values = effective_values("default")["models"][model]
    assert values["maxInFlight"] == REGISTRY[model].max_in_flight
    dep = render("--set", f"models.{model}.enabled=true").of_model(model)
    [d] = [x for x in dep if x["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ROOST_MAX_IN_FLIGHT"] == str(REGISTRY[model].max_in_flight)


def test_pvc_mode_requires_a_pinned_version(helm):
    err = fails(helm, "--set", "modelSource.type=pvc")
    assert "pin models.bird.bundleVersion" in err


def test_a_canary_is_a_second_deployment_behind_the_same_service(render_config):
    """pvc example: bird's canary serves another version; the Service selects both tracks' pods."""
    rendered = render_config("pvc")
    deps = {d["metadata"]["name"]: d for d in rendered.kind("Deployment")}
    stable, canary = deps["roost-bird"], deps["roost-bird-canary"]
    env = lambda d: {e["name"]: e.get("value") for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env(stable)["ROOST_BUNDLE"] == "/models/bird/20261101-120000"
    assert env(canary)["ROOST_BUNDLE"] == "/models/bird/20261202-090000"
    [svc] = [s for s in rendered.kind("Service") if s["metadata"]["name"] == "roost-bird"]
    for dep in (stable, canary):
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= pod_labels.items()  # both behind the Service
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert canary["spec"]["selector"]["matchLabels"]["roost.dev/track"] == "canary"
    assert stable["spec"]["template"]["metadata"]["labels"]["roost.dev/track"] == "stable"
    # the autoscaler scales the stable Deployment only
    [hpa] = [h for h in rendered.kind("HorizontalPodAutoscaler") if h["metadata"]["name"] == "roost-bird"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "roost-bird"


def selects(selector: dict, labels: dict) -> bool:
    """Whether a LabelSelector (matchLabels and matchExpressions) matches a pod's labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and key in labels and labels[key] in values) \
                or (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


@pytest.mark.parametrize("config", ["default", "pvc", "all-models", "keda", "gpu", "custom-autoscaling"])
def test_no_deployments_selector_matches_another_deployments_pods(render_config, render, config):
    """Stable and canary (and every model's) Deployments own disjoint pods: a selector that matched the
    other track's pods would let the HPA (which measures the pods its target's selector matches) average
    canary pods into the stable Deployment's scaling, and Kubernetes calls overlapping controllers
    undefined behaviour. The Service still selects both tracks."""
    rendered = render_config(config)
    if config == "pvc":
        assert any(d["metadata"]["name"].endswith("-canary") for d in rendered.kind("Deployment"))
    deps = rendered.kind("Deployment")
    for dep in deps:
        for other in deps:
            pod_labels = other["spec"]["template"]["metadata"]["labels"]
            mine = dep is other
            assert selects(dep["spec"]["selector"], pod_labels) == mine, (dep["metadata"]["name"], other["metadata"]["name"])
    for svc in rendered.kind("Service"):
        model = svc["metadata"]["labels"]["app.kubernetes.io/component"]
        behind = [d["metadata"]["name"] for d in deps
                  if selects({"matchLabels": svc["spec"]["selector"]}, d["spec"]["template"]["metadata"]["labels"])]
        assert sorted(behind) == sorted(d["metadata"]["name"] for d in rendered.of_model(model) if d["kind"] == "Deployment")
    for hpa in rendered.kind("HorizontalPodAutoscaler"):  # autoscalers target the stable track only
        assert not hpa["spec"]["scaleTargetRef"]["name"].endswith("-canary")
    for so in rendered.kind("ScaledObject"):
        assert not so["spec"]["scaleTargetRef"]["name"].endswith("-canary")


def test_a_canary_needs_a_different_version(helm):
    base = ["--set", "modelSource.type=pvc,models.bird.bundleVersion=v1,models.bird.canary.enabled=true"]
    assert "canary.bundleVersion" in fails(helm, *base)
    assert "nothing to compare" in fails(helm, *base, "--set", "models.bird.canary.bundleVersion=v1")


def test_the_version_skew_alert_allows_the_canary(render):
    args = ["--set", "modelSource.type=pvc,models.bird.bundleVersion=v1,metrics.serviceMonitor.enabled=true,alerts.enabled=true"]
    def skew(*more):
        [rule] = render(*args, *more).kind("PrometheusRule")
        return next(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"] if r["alert"] == "RoostVersionSkew")
    assert skew().endswith("> 1")
    assert skew("--set", "models.bird.canary.enabled=true,models.bird.canary.bundleVersion=v2").endswith("> 2")


def test_the_dashboard_splits_by_version_and_shows_the_queue(render_config):
    import json

    [cm] = render_config("default").kind("ConfigMap")
    exprs = [t["expr"] for p in json.loads(cm["data"]["roost.json"])["panels"] for t in p["targets"]]
    assert any("roost_queue_seconds_bucket" in e for e in exprs)
    assert any("roost_queue_rows" in e for e in exprs)
    assert any('protocol="oip_grpc"' in e for e in exprs)
    by_version = [e for e in exprs if "group_left(version)" in e]
    assert any("roost_requests_total" in e for e in by_version) and any("roost_stage_seconds" in e for e in by_version)


# --- precision (ROOST_PRECISION) --------------------------------------------------------------------

def container_env(dep: dict) -> dict:
    return {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def model_deployments(rendered, model: str) -> dict:
    return {d["metadata"]["name"]: d for d in rendered.of_model(model) if d["kind"] == "Deployment"}


@pytest.mark.parametrize("model", MODELS)
def test_precision_defaults_to_auto_for_every_model(render, model):
    assert effective_values("default")["models"][model]["precision"] == "auto"
    [dep] = model_deployments(render("--set", f"models.{model}.enabled=true"), model).values()
    assert container_env(dep)["ROOST_PRECISION"] == "auto"


def test_precision_is_set_per_model(render):
    rendered = render("--set", "models.segment.enabled=true,models.bird.precision=fp32")
    [bird] = model_deployments(rendered, "bird").values()
    [segment] = model_deployments(rendered, "segment").values()
    assert container_env(bird)["ROOST_PRECISION"] == "fp32"
    assert container_env(segment)["ROOST_PRECISION"] == "auto"


def test_int8_on_a_gpu_renders_as_the_server_allows_it(render):
    """services/runtime.model_file serves model.int8.onnx on CUDA when asked: the chart does not refuse it."""
    [dep] = model_deployments(render("--set", "models.bird.precision=int8,models.bird.gpu=1"), "bird").values()
    env = container_env(dep)
    assert (env["ROOST_PRECISION"], env["ROOST_DEVICE"]) == ("int8", "cuda")


def test_the_canary_takes_the_models_precision_unless_it_sets_its_own(render_config, render):
    deps = model_deployments(render_config("pvc"), "bird")
    assert container_env(deps["roost-bird-canary"])["ROOST_PRECISION"] == "auto"
    base = ["--set", "modelSource.type=pvc,models.bird.bundleVersion=v1,models.bird.canary.enabled=true,models.bird.canary.bundleVersion=v2"]
    deps = model_deployments(render(*base, "--set", "models.bird.precision=fp32"), "bird")
    assert {n: container_env(d)["ROOST_PRECISION"] for n, d in deps.items()} == {"roost-bird": "fp32", "roost-bird-canary": "fp32"}
    deps = model_deployments(render(*base, "--set", "models.bird.precision=fp32,models.bird.canary.precision=int8"), "bird")
    assert {n: container_env(d)["ROOST_PRECISION"] for n, d in deps.items()} == {"roost-bird": "fp32", "roost-bird-canary": "int8"}


@pytest.mark.parametrize("model", MODELS)
def test_int8_fails_for_a_model_without_an_int8_export(helm, render, model):
    """Only image models are quantized (training/quantize.py): tabular and collab bundles have no
    model.int8.onnx, and the server refuses ROOST_PRECISION=int8 on such a bundle at start."""
    from services.registry import MODELS as REGISTRY

    args = ["--set", f"models.{model}.enabled=true,models.{model}.precision=int8"]
    if REGISTRY[model].max_request_pixels == 0:  # no images: tabular, collab
        err = fails(helm, *args)
        assert f"models.{model}.precision=int8" in err and "no INT8 model" in err
        canary = ["--set", f"modelSource.type=pvc,models.bird.bundleVersion=v1,models.{model}.bundleVersion=v1",
                  "--set", f"models.{model}.canary.enabled=true,models.{model}.canary.bundleVersion=v2,models.{model}.canary.precision=int8"]
        assert f"models.{model}.canary.precision=int8" in fails(helm, "--set", f"models.{model}.enabled=true", *canary)
    else:
        [dep] = model_deployments(render(*args), model).values()
        assert container_env(dep)["ROOST_PRECISION"] == "int8"


def test_int8_with_the_fastai_runtime_fails(helm):
    err = fails(helm, "--set", "models.bird.runtime=fastai,bundleSigning.trustedKeySecret=roost-bundle-key,models.bird.precision=int8")
    assert "models.bird.precision=int8 with models.bird.runtime=fastai" in err
