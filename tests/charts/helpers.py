"""Shared pieces of the chart tests (constants, rendering results, validators)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from services.registry import MODELS as REGISTRY

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "roost"
EXAMPLES = {p.stem: p for p in sorted((CHART / "examples").glob("*.yaml"))}
CONFIGS = ["default", *EXAMPLES]  # every configuration CI renders and validates
MODELS = tuple(REGISTRY)  # services/registry.py: every model the chart must know
RELEASE = "roost"
NAMESPACE = "roost"
BIN = ROOT / "tools" / "bin"
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "ScaledObject", "PrometheusRule"}


@dataclass(frozen=True)
class Tools:
    helm: Path
    kubectl: Path
    checkov: Path
    env: dict


def config_args(config: str) -> list[str]:
    return [] if config == "default" else ["-f", str(EXAMPLES[config])]


@dataclass
class Rendered:
    text: str
    docs: list[dict]

    def kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def of_model(self, model: str) -> list[dict]:
        return [d for d in self.docs if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == model]

    def pod_specs(self) -> list[tuple[str, dict]]:
        """(object name, pod spec) of every workload and bare Pod."""
        out = []
        for d in self.docs:
            if d["kind"] == "Pod":
                out.append((f"Pod/{d['metadata']['name']}", d["spec"]))
            elif d["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet", "ReplicaSet"):
                out.append((f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]))
        return out


class HelmError(Exception):
    pass


def effective_values(config: str, *overrides: dict) -> dict:
    """The chart's values.yaml merged with an example file (as helm does for maps)."""

    def merge(base, over):
        if isinstance(base, dict) and isinstance(over, dict):
            return {**base, **{k: merge(base.get(k), v) for k, v in over.items()}}
        return over

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if config != "default":
        values = merge(values, yaml.safe_load(EXAMPLES[config].read_text()) or {})
    for o in overrides:
        values = merge(values, o)
    return values


def kubernetes_validate(path: Path, *versions: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "kubernetes-validate"
    args = [str(exe), "--strict"]
    for v in versions:
        args += ["-k", v]
    return subprocess.run([*args, str(path)], capture_output=True, text=True, timeout=120)


def checkov_json(tools: Tools, files: list[Path], framework: str, skips: list[str]) -> list[dict]:
    """Run checkov once over several files; returns its report(s) as a list of dicts."""
    args = [str(tools.checkov), "--framework", framework, "--skip-download", "--quiet", "-o", "json"]
    for f in files:
        args += ["-f", str(f)]
    if skips:
        args += ["--skip-check", ",".join(skips)]
    result = subprocess.run(args, capture_output=True, text=True, env=tools.env, timeout=300)
    if result.returncode not in (0, 1) or not result.stdout.strip():
        raise RuntimeError(f"checkov failed ({result.returncode}):\n{result.stderr[-4000:]}")
    report = json.loads(result.stdout)
    return report if isinstance(report, list) else [report]


# --- Pod Security Standard "restricted" (Kubernetes 1.29-1.37), plus our read-only root -----------
_ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}


def restricted_violations(spec: dict) -> list[str]:
    """Why a pod spec fails the "restricted" Pod Security Standard (empty list: it passes).

    Follows https://kubernetes.io/docs/concepts/security/pod-security-standards/ (baseline and
    restricted controls) and adds readOnlyRootFilesystem, which Roost requires of itself.
    """
    bad = []
    pod = spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            bad.append(f"pod {key}")
    if pod.get("runAsUser") == 0:
        bad.append("pod runAsUser 0")
    if (pod.get("seLinuxOptions") or {}).get("type") not in (None, "", "container_t", "container_init_t", "container_kvm_t"):
        bad.append("pod seLinux type")
    if pod.get("sysctls"):
        bad.append("pod sysctls")
    for vol in spec.get("volumes") or []:
        kinds = set(vol) - {"name"}
        if not kinds <= _ALLOWED_VOLUMES:
            bad.append(f"volume {vol['name']} of type {sorted(kinds)}")
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or []), *(spec.get("ephemeralContainers") or [])]
    for c in containers:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: adds capabilities {caps.get('add')}")
        if sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
            bad.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser", pod.get("runAsUser")) == 0:
            bad.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or pod.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost, not {seccomp}")
        if sc.get("procMount") not in (None, "Default"):
            bad.append(f"{name}: procMount")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            bad.append(f"{name}: hostPort")
        if sc.get("readOnlyRootFilesystem") is not True:
            bad.append(f"{name}: readOnlyRootFilesystem must be true (Roost's own rule)")
    return bad


# --- metric names referenced by PromQL --------------------------------------------------------------
_PROMQL_WORDS = {"sum", "by", "rate", "irate", "increase", "histogram_quantile", "count", "avg", "max", "min",
                 "without", "on", "ignoring", "group_left", "group_right", "le", "and", "or", "unless", "offset",
                 "label_values", "topk", "bottomk", "clamp_min", "clamp_max", "abs", "time", "vector", "scalar"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (identifiers that are not functions, keywords or labels)."""
    expr = re.sub(r"label_values\((.*),\s*\w+\s*\)", r"(\1)", expr)  # Grafana: label_values(metric, label)
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # drop label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # drop ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # drop grouping labels
    expr = re.sub(r"<<[^>]*>>", "", expr)  # prometheus-adapter template fields
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = m.group(0)
        after = expr[m.end():m.end() + 1]
        if word in _PROMQL_WORDS or after == "(" or word.startswith("$"):
            continue
        names.add(word)
    return {n for n in names if not re.fullmatch(r"[0-9.e]+", n)}


def base_metric(name: str) -> str:
    """roost_stage_seconds_bucket -> roost_stage_seconds (histogram/counter series suffixes)."""
    return re.sub(r"_(bucket|sum|count)$", "", name)


# BentoML's own /metrics names (bentoml 1.4: <namespace>_request_* with namespace bentoml_service).
BENTOML_METRICS = (
    "bentoml_service_request_total",
    "bentoml_service_request_duration_seconds",
    "bentoml_service_request_in_progress",
    "bentoml_service_last_request_timestamp_seconds",
    "bentoml_service_adaptive_batch_size",
)


# --- CRD objects -------------------------------------------------------------------------------------
def crd_model(kind: str):
    """The cloudcoil pydantic model of a CRD kind (the project's pinned CRD schemas)."""
    if kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        from cloudcoil.models.prometheus_operator import v1

        return getattr(v1, kind)
    if kind == "ScaledObject":
        from cloudcoil.models.keda import v1alpha1

        return v1alpha1.ScaledObject
    raise KeyError(kind)


def crd_problems(doc: dict) -> list[str]:
    """Validate one CRD object; the models ignore unknown fields, so a round trip must keep them all."""
    model = crd_model(doc["kind"])
    obj = model.model_validate(doc)  # raises pydantic.ValidationError on wrong types / missing fields
    back = obj.model_dump(by_alias=True, exclude_unset=True, mode="json")
    problems = []

    def compare(a, b, path):
        if isinstance(a, dict):
            if not isinstance(b, dict):
                problems.append(f"{path}: became {b!r}")
                return
            for k, v in a.items():
                if k not in b:
                    problems.append(f"{path}.{k}: not a field of {doc['kind']}")
                else:
                    compare(v, b[k], f"{path}.{k}")
        elif isinstance(a, list):
            if not isinstance(b, list) or len(a) != len(b):
                problems.append(f"{path}: list changed")
                return
            for i, (x, y) in enumerate(zip(a, b)):
                compare(x, y, f"{path}[{i}]")

    compare(doc, back, doc["kind"])
    return problems

# NVIDIA dcgm-exporter series the dashboard's GPU panels read (DCGM_FI_PROF_* only where profiling
# metrics are enabled: MIG slices report no DCGM_FI_DEV_GPU_UTIL).
DCGM_METRICS = (
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
)


def dashboard_panels(rendered) -> list[dict]:
    """The Grafana dashboard's panels from a render's dashboard ConfigMap."""
    import json

    [cm] = rendered.kind("ConfigMap")
    return json.loads(cm["data"]["roost.json"])["panels"]
