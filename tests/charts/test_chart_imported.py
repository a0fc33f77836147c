"""The chart deploys an imported learner (`python -m training import --name NAME`): a `models.NAME`
entry (a copy of its task's lesson entry, with its own image) runs services.imported:Imported and
tells it which bundles are its own (ROOST_MODEL)."""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.charts.helpers import CHART, NAMESPACE, RELEASE


def imported_values(tmp_path, name: str = "pets") -> str:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    entry = copy.deepcopy(values["models"]["bird"])  # an image classifier: the bird entry's limits and resources
    entry["image"]["repository"] = f"registry.example/roost-{name}"
    models = {m: {"enabled": False, "image": values["models"][m]["image"]} for m in values["models"]}
    models[name] = entry
    path = tmp_path / "imported.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return str(path)


def test_an_imported_model_is_deployed_with_the_imported_service(helm, tmp_path):
    values = imported_values(tmp_path)
    lint = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, "-f", values, check=False)
    assert lint.returncode == 0 and "[WARNING]" not in lint.stdout, lint.stdout + lint.stderr
    docs = [d for d in yaml.safe_load_all(helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", values).stdout) if d]
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert [d["metadata"]["labels"]["app.kubernetes.io/component"] for d in deployments] == ["pets"]
    container = deployments[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "services.imported:Imported"
    assert container["image"].startswith("registry.example/roost-pets:")
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ROOST_MODEL"] == "pets" and env["ROOST_ARTIFACTS"]
    assert {d["kind"] for d in docs if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "pets"} >= {
        "Deployment", "Service", "PodDisruptionBudget"}


def test_lesson_models_keep_their_own_service(render):
    for d in render().docs:
        if d["kind"] == "Deployment":
            model = d["metadata"]["labels"]["app.kubernetes.io/component"]
            assert d["spec"]["template"]["spec"]["containers"][0]["args"][0] == f"services.{model}:{model.title()}"


@pytest.mark.parametrize("bad", ["Pets", "my_pets", "-pets"])
def test_names_that_are_not_bundle_names_are_refused(helm, tmp_path, bad):
    values = imported_values(tmp_path, "pets")
    text = open(values).read().replace("  pets:", f"  {bad!r}:" if bad.startswith("-") else f"  {bad}:")
    open(values, "w").write(text)
    result = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", values, check=False)
    assert result.returncode != 0 and "schema" in result.stderr.lower(), result.stderr
