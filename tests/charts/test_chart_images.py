"""Image recipes, read without a container engine: services/Dockerfile.serve and Dockerfile.train agree
with the chart's values and pass checkov. (tests/images/ builds and runs the images themselves.)"""

from __future__ import annotations

import re

import yaml

from tests.charts.helpers import CHART, ROOT, checkov_json

SERVICES = ROOT / "services"
SERVE = (SERVICES / "Dockerfile.serve").read_text()
TRAIN = (SERVICES / "Dockerfile.train").read_text()
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def env_of(dockerfile: str) -> dict[str, str]:
    """The ENV instructions of a Dockerfile's last stage (KEY=VALUE form, with continuations)."""
    last_stage = re.split(r"^FROM ", dockerfile, flags=re.M)[-1].replace("\\\n", " ")
    env = {}
    for line in re.findall(r"^ENV (.*)$", last_stage, flags=re.M):
        env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def test_serving_image_matches_the_charts_user_ports_and_paths():
    env = env_of(SERVE)
    assert re.findall(r"^USER (\S+)", SERVE, flags=re.M)[-1] == "{runAsUser}:{runAsGroup}".format(**VALUES["podSecurityContext"])
    ports = {int(p) for p in re.findall(r"^EXPOSE (.*)$", SERVE, flags=re.M)[-1].split()}
    assert ports == {VALUES["service"]["httpPort"], VALUES["service"]["grpcPort"]}
    assert env["ROOST_GRPC_PORT"] == str(VALUES["service"]["grpcPort"])
    assert f"--port {VALUES['service']['httpPort']}" in re.findall(r"^CMD (.*)$", SERVE, flags=re.M)[-1]
    # Image mode: the chart points ROOST_ARTIFACTS where the image keeps its bundle.
    assert env["ROOST_ARTIFACTS"] == VALUES["modelSource"]["image"]["artifactsPath"] == "/opt/roost/artifacts"
    # Everything written at run time under /tmp, the chart's emptyDir on a read-only root.
    assert env["HOME"] == "/tmp" and env["BENTOML_HOME"].startswith("/tmp/")
    assert "ROOST_SERVICE" in env and "BASE_IMAGE" in SERVE.split("FROM")[0]


def test_training_image_runs_as_the_same_user_with_a_tmp_home():
    assert re.findall(r"^USER (\S+)", TRAIN, flags=re.M)[-1] == "10001:10001"
    env = env_of(TRAIN)
    assert env["HOME"] == "/tmp" and env["FASTAI_HOME"].startswith("/tmp/")


def test_no_document_names_another_user_id_or_the_bento_paths():
    """One user id (10001) everywhere; no leftovers of bento-built images (UID 1034, /home/bentoml)."""
    texts = {p: p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), CHART / "values.yaml",
                                         *(CHART / "examples").glob("*.yaml"), *(ROOT / "k8s").rglob("*.yaml")]}
    assert [str(p) for p, t in texts.items() if re.search(r"\b1034\b|/home/bentoml|bentofile", t)] == []


def test_dockerfiles_pass_checkov(tools):
    # The two skips are inline in the files, with their reasons (no HEALTHCHECK in OCI images; the base
    # image is a build argument).
    reports = checkov_json(tools, [SERVICES / "Dockerfile.serve", SERVICES / "Dockerfile.train"], "dockerfile", [])
    failed = [f"{c['check_id']} {c['check_name']}: {c['file_path']}" for r in reports for c in r["results"]["failed_checks"]]
    assert failed == []
