"""Image recipes: bentofiles and Dockerfiles (no container engine here: checked, built as bentos)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.charts.helpers import MODELS, ROOT, checkov_json

SERVICES = ROOT / "services"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SERVE_REQS = set(PYPROJECT["dependencies"]) | set(PYPROJECT["optional-dependencies"]["serve"])


def req_name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")


@pytest.mark.parametrize("model", MODELS)
def test_bentofile_serves_the_model_with_the_serve_extra(model):
    bentofile = yaml.safe_load((SERVICES / f"{model}.bentofile.yaml").read_text())
    assert bentofile["service"] == f"services.{model}:{model.capitalize()}"
    assert bentofile["name"] == f"roost-{model}"
    assert set(bentofile["python"]["packages"]) == SERVE_REQS
    names = {req_name(p) for p in bentofile["python"]["packages"]}
    assert not names & {"torch", "torchvision", "fastai", "timm"}
    assert "services/*.py" in bentofile["include"]
    assert not any(p.startswith("training") for p in bentofile["include"])
    envs = {e["name"]: e["value"] for e in bentofile["envs"]}
    assert envs["BENTOML_DO_NOT_TRACK"] == "True" and envs["ROOST_GRPC_PORT"] == "8001"


def dockerfile_requirements(extra: str) -> list[str]:
    """Run the Dockerfile's own requirements step (the python -c line) against pyproject.toml."""
    text = (SERVICES / "Dockerfile.serve").read_text().replace("\\\n", "")
    [code] = re.findall(r"^RUN python -c '(.*)' > /tmp/requirements.txt$", text, flags=re.M)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "EXTRA": extra},
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def test_serving_images_carry_torch_only_for_the_fastai_runtime():
    serve = {req_name(r) for r in dockerfile_requirements("serve")}
    gpu = dockerfile_requirements("gpu")
    fastai = {req_name(r) for r in dockerfile_requirements("fastai")}
    assert "onnxruntime" in serve and "bentoml" in serve and "torch" not in serve
    assert any(r.startswith("onnxruntime-gpu[cuda,cudnn]") for r in gpu) and not any(req_name(r) == "torch" for r in gpu)
    assert {"torch", "fastai", "onnxruntime", "bentoml"} <= fastai


def test_dockerfiles_run_as_non_root_and_pass_checkov(tools):
    for name in ("Dockerfile.serve", "Dockerfile.train"):
        text = (SERVICES / name).read_text()
        assert re.findall(r"^USER (\S+)", text, flags=re.M)[-1] == "10001:10001", name
    reports = checkov_json(tools, [SERVICES / "Dockerfile.serve", SERVICES / "Dockerfile.train"], "dockerfile", [])
    failed = [f"{c['check_id']} {c['check_name']}: {c['file_path']}" for r in reports for c in r["results"]["failed_checks"]]
    assert failed == []


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_bentoml_build_succeeds(model, tmp_path):
    if not (SERVICES / f"{model}.py").exists():
        pytest.skip(f"services/{model}.py is not written yet")
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    bentoml = Path(sys.executable).parent / "bentoml"
    result = subprocess.run([str(bentoml), "build", "-f", f"services/{model}.bentofile.yaml", "-o", "tag", "."],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [bento] = list((tmp_path / "bentoml" / "bentos" / f"roost-{model}").glob("*/bento.yaml"))
    info = yaml.safe_load(bento.read_text())
    assert info["service"] == f"services.{model}:{model.capitalize()}"
    src = bento.parent / "src"
    assert (src / "services" / f"{model}.py").exists() and not (src / "training").exists()
    assert (bento.parent / "env" / "docker" / "Dockerfile").exists()
