"""Every lesson model's facts, in one place.

Serving reads its defaults here (services/settings.py); the bentofiles are generated from it
(`python -m services.registry bentofiles`, `--check` to compare); the Makefile's model list, the
chart's per-model defaults and the training Jobs are checked against it
(tests/services/test_registry.py). A new model is one entry here, one recipe and one service file.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelFacts:
    name: str
    service: str  # what `bentoml serve` takes: module:Class
    max_batch_size: int  # rows per batch the runtime executes
    max_latency_ms: int  # how long a free runner waits to fill a batch while another batch runs
    max_queue_rows: int  # rows waiting for the model before 429
    timeout_s: float  # a request's deadline, from arrival to answer (504 after it)
    max_request_rows: int  # rows (images, table rows, pairs) one request may carry
    cpu: str  # Kubernetes CPU request per pod
    memory: str  # Kubernetes memory request per pod
    memory_limit: str
    in_flight_target: int  # autoscaling target: requests in flight per pod

    @property
    def service_class(self) -> str:
        return self.service.split(":", 1)[1]


# Batch sizes are CPU figures from measurement: the bird network runs fastest per image at 8 rows
# (ONNX Runtime alone: 186 img/s at 4, 198 at 8, 190 at 16, 181 at 32) and its memory arena grows
# with the batch (RSS 201 MB at 8, 489 MB at 32). A GPU deployment raises them (ROOST_MAX_BATCH_SIZE).
MODELS: dict[str, ModelFacts] = {
    facts.name: facts
    for facts in (
        ModelFacts("bird", "services.bird:Bird", max_batch_size=8, max_latency_ms=10, max_queue_rows=256,
                   timeout_s=30, max_request_rows=64, cpu="1", memory="768Mi", memory_limit="1536Mi",
                   in_flight_target=16),
        ModelFacts("segment", "services.segment:Segment", max_batch_size=8, max_latency_ms=20, max_queue_rows=64,
                   timeout_s=60, max_request_rows=64, cpu="2", memory="1Gi", memory_limit="2Gi",
                   in_flight_target=4),
        ModelFacts("tabular", "services.tabular:Tabular", max_batch_size=256, max_latency_ms=2, max_queue_rows=4096,
                   timeout_s=10, max_request_rows=1024, cpu="500m", memory="512Mi", memory_limit="1Gi",
                   in_flight_target=64),
        ModelFacts("collab", "services.collab:Collab", max_batch_size=4096, max_latency_ms=2, max_queue_rows=16384,
                   timeout_s=10, max_request_rows=4096, cpu="500m", memory="512Mi", memory_limit="1Gi",
                   in_flight_target=64),
    )
}


def facts_for(model: str) -> ModelFacts:
    try:
        return MODELS[model]
    except KeyError:
        raise SystemExit(
            f"unknown model {model!r}; Roost serves {sorted(MODELS)}, and imported learners through "
            f"{IMPORTED_SERVICE} (make serve MODEL=<name>)"
        ) from None


# --- imported learners (`python -m training import`): models that are not one of the four -----------
# An imported model is served by services.imported:Imported with the limits, batching and resources of
# the lesson model of its task, under its own name (from its bundle's manifest); services/imported.py
# registers those facts when it loads the bundle, so everything that asks facts_for(name) gets them.

IMPORTED_SERVICE = "services.imported:Imported"
LESSON_OF_TASK: dict[str, str] = {
    "image-classification": "bird",
    "image-multilabel-classification": "bird",
    "semantic-segmentation": "segment",
    "tabular-classification": "tabular",
    "tabular-regression": "tabular",
    "collaborative-filtering": "collab",
}


def imported_facts(name: str, task: str) -> ModelFacts:
    """The facts of an imported model called ``name`` whose manifest says ``task``."""
    from dataclasses import replace

    if name in MODELS and MODELS[name].service != IMPORTED_SERVICE:
        raise ValueError(f"'{name}' is a lesson model's name; an imported model needs another")
    if task not in LESSON_OF_TASK:
        raise ValueError(f"task {task!r} is not one Roost serves ({', '.join(LESSON_OF_TASK)})")
    return replace(MODELS[LESSON_OF_TASK[task]], name=name, service=IMPORTED_SERVICE)


def register(facts: ModelFacts) -> ModelFacts:
    """Make an imported model's facts known to this process (settings, startup checks, limits)."""
    if facts.service != IMPORTED_SERVICE:
        raise ValueError(f"only imported models are registered at run time, not {facts.name!r}")
    MODELS[facts.name] = facts
    return facts


# --- bentofiles: services/<model>.bentofile.yaml, generated from the entries above ---------------

_ROOT = Path(__file__).resolve().parents[1]

_BENTOFILE = """\
# Generated from services/registry.py by `python -m services.registry bentofiles`: edit the registry
# (or the template there), not this file; `python -m services.registry bentofiles --check` compares.
# Bento for the {name} model:  bentoml build -f services/{name}.bentofile.yaml .   (from the repo root)
# then, where a container engine exists:  bentoml containerize roost-{name}:latest
# The image runs `bentoml serve` in /home/bentoml/bento; with the Helm chart set
# models.{name}.serveTarget=/home/bentoml/bento and podSecurityContext.runAsUser=1034 (BentoML's user).
# Bundles under artifacts/{name}/ at build time are baked in (ROOST_ARTIFACTS below); without any, mount
# them (chart: modelSource.type=pvc, which sets ROOST_ARTIFACTS=/models).
service: "{service}"
name: roost-{name}
labels:
  project: roost
  model: {name}
description: "Roost {name} model (fast.ai lesson 1) over ONNX Runtime, HTTP + Open Inference Protocol"
include:
  - "services/*.py"
  - "services/*.yaml"
  - "services/oip/**"
  - "artifacts/{name}/**"
exclude:
  - "**/__pycache__/"
  - "**/*.pyc"
  - "services/*.bentofile.yaml"
  - "training/"
  - "tests/"
python:
  # The project's dependencies plus the `serve` extra of pyproject.toml (no torch, no fastai).
  packages:
{packages}
  lock_packages: false
docker:
  python_version: "3.11"
  distro: debian
envs:
  - name: BENTOML_DO_NOT_TRACK
    value: "True"
  - name: ROOST_ARTIFACTS
    value: /home/bentoml/bento/src/artifacts
  - name: ROOST_GRPC_PORT
    value: "8001"
"""


def serve_requirements(pyproject: Path | None = None) -> list[str]:
    """pyproject.toml's dependencies plus its `serve` extra: what a serving image installs."""
    import tomllib

    project = tomllib.loads((pyproject or _ROOT / "pyproject.toml").read_text())["project"]
    reqs = set(project.get("dependencies", [])) | set(project["optional-dependencies"]["serve"])
    return sorted(reqs, key=lambda r: (r.lower(), r))


def bentofile_path(model: str, root: Path | None = None) -> Path:
    return (root or _ROOT) / "services" / f"{model}.bentofile.yaml"


def render_bentofile(model: str, pyproject: Path | None = None) -> str:
    """The text of services/<model>.bentofile.yaml for one registered model."""
    facts = facts_for(model)
    packages = "\n".join(f'    - "{req}"' for req in serve_requirements(pyproject))
    return _BENTOFILE.format(name=facts.name, service=facts.service, packages=packages)


def stale_bentofiles(root: Path | None = None) -> list[str]:
    """Bentofiles that differ from what the registry renders, are missing, or name no registered model."""
    root = root or _ROOT
    pyproject = root / "pyproject.toml"
    stale = []
    for model in MODELS:
        path = bentofile_path(model, root)
        if not path.exists():
            stale.append(f"{path.relative_to(root)} (missing)")
        elif path.read_text() != render_bentofile(model, pyproject):
            stale.append(f"{path.relative_to(root)} (differs)")
    for path in sorted((root / "services").glob("*.bentofile.yaml")):
        if path.name.removesuffix(".bentofile.yaml") not in MODELS:
            stale.append(f"{path.relative_to(root)} (no such model in the registry)")
    return stale


def write_bentofiles(root: Path | None = None) -> list[Path]:
    root = root or _ROOT
    written = []
    for model in MODELS:
        path = bentofile_path(model, root)
        text = render_bentofile(model, root / "pyproject.toml")
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m services.registry", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    bentofiles = sub.add_parser("bentofiles", help="write services/<model>.bentofile.yaml for every registered model")
    bentofiles.add_argument("--check", action="store_true", help="write nothing; exit 1 listing the files that differ")
    args = parser.parse_args(argv)

    if args.command == "bentofiles":
        if args.check:
            stale = stale_bentofiles()
            for line in stale:
                print(f"stale: {line}", file=sys.stderr)
            if stale:
                print("run: python -m services.registry bentofiles", file=sys.stderr)
                return 1
            print(f"bentofiles up to date ({len(MODELS)} models)")
            return 0
        for path in write_bentofiles():
            print(f"wrote {path.relative_to(_ROOT)}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
