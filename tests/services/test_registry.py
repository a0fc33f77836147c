"""services/registry.py is the source of truth; everything that repeats a model's facts agrees with it.

Fast: no servers, no helm. (The rendered chart is checked in tests/charts/.)
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import bentoml
import pytest
import yaml

from services import registry
from services.registry import MODELS, ModelFacts

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "roost"
NAMES = list(MODELS)


def test_entries_are_keyed_by_their_name_and_sane():
    assert NAMES == ["bird", "segment", "tabular", "collab"]
    for name, facts in MODELS.items():
        assert isinstance(facts, ModelFacts) and facts.name == name
        assert facts.max_batch_size >= 1 and facts.max_queue_rows >= facts.max_batch_size
        assert facts.max_latency_ms >= 0 and facts.timeout_s > 0 and facts.max_request_rows >= 1
        assert facts.in_flight_target >= 1


def test_unknown_model_is_refused_by_name():
    with pytest.raises(SystemExit, match="dog"):
        registry.facts_for("dog")


# --- the Makefile -------------------------------------------------------------------------------------

def test_makefile_models_are_the_registry():
    text = (ROOT / "Makefile").read_text()
    [line] = re.findall(r"^MODELS\s*:?=\s*(.*)$", text, flags=re.M)
    assert line.split() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_service_target_follows_the_convention_the_makefile_and_chart_use(name):
    """`make serve-<m>` and the chart's default serveTarget both spell services.<m>:<M>."""
    assert MODELS[name].service == f"services.{name}:{name.capitalize()}"
    assert MODELS[name].service_class == name.capitalize()


# --- the services -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_each_service_imports_and_serves_its_model(name):
    module_name, class_name = MODELS[name].service.split(":")
    assert module_name == f"services.{name}"
    service = getattr(importlib.import_module(module_name), class_name)
    assert isinstance(service, bentoml.Service), type(service)
    assert service.inner.model_class.name == name


# --- the container images ------------------------------------------------------------------------------

def test_no_bentofiles_are_left():
    """Images are built from services/Dockerfile.serve by images/build.sh; no bento is built."""
    assert sorted((ROOT / "services").glob("*.bentofile.yaml")) == []


def test_image_requirements_are_the_extras_and_serving_takes_no_torch():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = set(project["dependencies"])
    assert set(registry.image_requirements()) == base | set(project["optional-dependencies"]["serve"])
    gpu = registry.image_requirements("gpu")
    assert any(r.startswith("onnxruntime-gpu[cuda,cudnn]") for r in gpu)
    names = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in [*registry.image_requirements(), *gpu]}
    assert not names & {"torch", "torchvision", "fastai", "timm", "onnx", "onnxscript"}
    assert "onnxruntime" not in {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0] for r in gpu}
    train = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in registry.image_requirements("train")}
    assert {"torch", "fastai", "onnx"} <= train
    fastai = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in registry.image_requirements("fastai")}
    assert {"torch", "fastai", "bentoml", "onnxruntime"} <= fastai
    with pytest.raises(SystemExit, match="dev"):
        registry.image_requirements("dev")


# What each pinned onnxruntime-gpu wheel needs, read from the wheel itself (build_and_package_info.py's
# cuda_version, its nvidia-* extras, readelf -d of libonnxruntime_providers_cuda.so): version -> (CUDA it
# was built with, cuDNN major, minimum Linux driver for that CUDA). A new pin needs its row, checked the same way.
ORT_GPU_WHEELS = {"1.31.1": ("13.0", "9", "580.65.06")}
# A CPU onnxruntime version for which PyPI has no onnxruntime-gpu of the same version -> the GPU pin instead.
ORT_GPU_FOR_CPU = {"1.32.0": "1.31.1"}


def test_onnxruntime_gpu_is_pinned_exactly_to_the_cpu_version_and_its_cuda_is_documented():
    import tomllib
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    [pin] = [Requirement(r) for r in extras["gpu"] if Requirement(r).name == "onnxruntime-gpu"]
    [spec] = pin.specifier
    assert spec.operator == "==" and re.fullmatch(r"\d+\.\d+\.\d+", spec.version), f"pin onnxruntime-gpu exactly, not {pin}"
    try:
        cpu = version("onnxruntime")
    except PackageNotFoundError:
        pytest.skip("the CPU onnxruntime is not installed here")
    for extra in ("serve", "train"):  # the CPU version in use is one the project admits
        [req] = [Requirement(r) for r in extras[extra] if Requirement(r).name == "onnxruntime"]
        assert req.specifier.contains(cpu), (extra, str(req), cpu)
    assert spec.version == ORT_GPU_FOR_CPU.get(cpu, cpu), (
        f"onnxruntime {cpu} (CPU) and onnxruntime-gpu {spec.version} drifted apart: pin onnxruntime-gpu=={cpu}, "
        "or record in ORT_GPU_FOR_CPU why PyPI has no such GPU wheel")
    assert f"onnxruntime-gpu[cuda,cudnn]=={spec.version}" in registry.image_requirements("gpu")
    cuda, cudnn, driver = ORT_GPU_WHEELS[spec.version]
    docs = (ROOT / "docs" / "deploy.md").read_text()
    gpu_section = docs[docs.index("## GPU nodes"):docs.index("\n## ", docs.index("## GPU nodes") + 1)]
    for fact in (f"onnxruntime-gpu=={spec.version}", f"CUDA {cuda}", f"cuDNN {cudnn}", f">= {driver}",
                 f"libcudart.so.{cuda.split('.')[0]}"):
        assert fact in gpu_section, fact
    dockerfile = (ROOT / "services" / "Dockerfile.serve").read_text()
    assert f"CUDA {cuda}" in dockerfile and f">= {driver}" in dockerfile


def test_cli_prints_what_images_build_sh_asks():
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "services.registry", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    assert cli("service", "segment").stdout.strip() == MODELS["segment"].service
    assert cli("requirements").stdout.split() == registry.image_requirements()
    assert cli("requirements", "--extra", "gpu").stdout.split() == registry.image_requirements("gpu")
    refused = cli("service", "dog")
    assert refused.returncode != 0 and "dog" in refused.stderr


# --- the chart's per-model defaults --------------------------------------------------------------------

@pytest.fixture(scope="module")
def chart_models() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())["models"]


def test_chart_knows_exactly_the_registered_models(chart_models):
    assert list(chart_models) == NAMES
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]["models"]["properties"]) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_chart_defaults_are_the_registry(chart_models, name):
    facts, values = MODELS[name], chart_models[name]
    assert values["batching"] == {"maxBatchSize": facts.max_batch_size, "maxLatencyMs": facts.max_latency_ms}
    assert values["maxQueue"] == facts.max_queue_rows
    assert values["timeoutSeconds"] == facts.timeout_s
    assert values["resources"] == {"requests": {"cpu": facts.cpu, "memory": facts.memory},
                                   "limits": {"memory": facts.memory_limit}}
    assert values["autoscaling"]["targetAverageValue"] == facts.in_flight_target
    assert values.get("workers", 1) == 1  # settings' default too
    assert "maxConcurrency" not in values
    assert values["serveTarget"] == ""  # the chart then runs services.<m>:<M>, which is facts.service


def test_no_chart_or_k8s_file_still_names_max_concurrency():
    hits = [str(p.relative_to(ROOT)) for folder in ("charts", "k8s") for p in (ROOT / folder).rglob("*")
            if p.is_file() and re.search("maxConcurrency|MAX_CONCURRENCY", p.read_text(errors="replace"))]
    assert hits == []


def test_hand_written_keda_example_aims_at_the_registry_target():
    [doc] = [d for d in yaml.safe_load_all((ROOT / "k8s" / "keda" / "scaledobject-bird.yaml").read_text()) if d]
    [prometheus] = [t for t in doc["spec"]["triggers"] if t["type"] == "prometheus"]
    assert prometheus["metadata"]["threshold"] == str(MODELS["bird"].in_flight_target)


# --- the training Jobs ---------------------------------------------------------------------------------

def test_one_training_job_per_model_named_for_it():
    training = ROOT / "k8s" / "training"
    kustomization = yaml.safe_load((training / "kustomization.yaml").read_text())
    job_files = [r for r in kustomization["resources"] if r.startswith("job-")]
    assert job_files == [f"job-{name}.yaml" for name in NAMES]
    assert sorted(p.name for p in training.glob("job-*.yaml")) == sorted(job_files)
    for name in NAMES:
        [job] = [d for d in yaml.safe_load_all((training / f"job-{name}.yaml").read_text()) if d]
        assert job["kind"] == "Job"
        assert job["metadata"]["name"] == f"roost-train-{name}"
        assert job["metadata"]["labels"]["app.kubernetes.io/component"] == name
        assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == name
        [container] = job["spec"]["template"]["spec"]["containers"]
        assert container["args"][0] == name


# --- services/settings.py -------------------------------------------------------------------------------

@pytest.fixture
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("ROOST_"):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.mark.parametrize("name", NAMES)
def test_settings_default_to_the_registry(clean_env, name):
    from services.settings import cores, settings_for

    facts, s = MODELS[name], settings_for(name)
    assert s.model == name
    assert s.max_batch_size == facts.max_batch_size
    assert s.max_latency_ms == facts.max_latency_ms
    assert s.max_queue_rows == facts.max_queue_rows
    assert s.timeout_s == facts.timeout_s
    assert s.workers == 1
    assert s.ort_threads == max(1, cores())
    assert s.runtime == "onnx" and s.device == "auto" and s.grpc_port == 0
    assert s.bundle is None and s.artifacts == Path("artifacts")


def test_settings_read_the_variables_the_chart_sets(clean_env):
    from services.settings import settings_for

    for key, value in {"ROOST_MAX_BATCH_SIZE": "8", "ROOST_MAX_LATENCY_MS": "0", "ROOST_MAX_QUEUE": "5",
                       "ROOST_TIMEOUT_S": "2.5", "ROOST_WORKERS": "2", "ROOST_ORT_THREADS": "3",
                       "ROOST_GRPC_PORT": "8001", "ROOST_GRPC_HOST": "0.0.0.0"}.items():
        clean_env.setenv(key, value)
    s = settings_for("bird")
    assert (s.max_batch_size, s.max_latency_ms, s.max_queue_rows, s.timeout_s) == (8, 0, 5, 2.5)
    assert (s.workers, s.ort_threads, s.grpc_port, s.grpc_host) == (2, 3, 8001, "0.0.0.0")


@pytest.mark.parametrize("bad", ["0", "-3", "abc", "1.5"])
def test_bad_max_queue_stops_the_server_naming_the_variable(clean_env, bad):
    from services.settings import settings_for

    clean_env.setenv("ROOST_MAX_QUEUE", bad)
    with pytest.raises(SystemExit) as exc:
        settings_for("bird")
    assert "ROOST_MAX_QUEUE" in str(exc.value.code)
