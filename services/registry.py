"""Every lesson model's facts, in one place.

Serving reads its defaults here (services/settings.py); the container images take each model's
service and the serving requirements from it (`python -m services.registry service|requirements`,
used by images/build.sh); the Makefile's model list, the chart's per-model defaults and the training
Jobs are checked against it (tests/services/test_registry.py). A new model is one entry here, one
recipe and one service file.
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
    max_in_flight: int  # requests a worker holds at once (admitted, unanswered) before 429
    max_queue_wait_ms: int  # the latency target: a request queued longer is shed unrun (503)
    max_body_mb: float  # request body limit (every route), also the gRPC message limit
    max_request_pixels: int  # decoded image pixels one request may carry (0: no images)
    cpu: str  # Kubernetes CPU request per pod
    memory: str  # Kubernetes memory request per pod
    memory_limit: str
    in_flight_target: int  # autoscaling target: requests in flight per pod

    @property
    def service_class(self) -> str:
        return self.service.split(":", 1)[1]


# Admission (max_in_flight) and the queue-wait bound are sized from `make chaos` (docs/reliability.md):
# at 300 bird clients on 2 cores, 32 in flight with 250 ms of queue wait kept ~0.8x the best goodput,
# where 1 s of queue wait let accepted requests wait seconds; 32 stays above the autoscaling target
# (in_flight_target), so a pod scales out before it sheds.
# Batch sizes are CPU figures from measurement: the bird network runs fastest per image at 8 rows
# (ONNX Runtime alone: 186 img/s at 4, 198 at 8, 190 at 16, 181 at 32) and its memory arena grows
# with the batch (RSS 201 MB at 8, 489 MB at 32). A GPU deployment raises them (ROOST_MAX_BATCH_SIZE).
MODELS: dict[str, ModelFacts] = {
    facts.name: facts
    for facts in (
        ModelFacts("bird", "services.bird:Bird", max_batch_size=8, max_latency_ms=10, max_queue_rows=256,
                   timeout_s=30, max_request_rows=64, max_in_flight=32, max_queue_wait_ms=250, max_body_mb=32,
                   max_request_pixels=200_000_000, cpu="1", memory="768Mi", memory_limit="1536Mi",
                   in_flight_target=16),
        ModelFacts("segment", "services.segment:Segment", max_batch_size=8, max_latency_ms=20, max_queue_rows=64,
                   timeout_s=60, max_request_rows=64, max_in_flight=8, max_queue_wait_ms=1000, max_body_mb=32,
                   max_request_pixels=50_000_000, cpu="2", memory="1Gi", memory_limit="2Gi",
                   in_flight_target=4),
        ModelFacts("tabular", "services.tabular:Tabular", max_batch_size=256, max_latency_ms=2, max_queue_rows=4096,
                   timeout_s=10, max_request_rows=1024, max_in_flight=256, max_queue_wait_ms=250, max_body_mb=4,
                   max_request_pixels=0, cpu="500m", memory="512Mi", memory_limit="1Gi",
                   in_flight_target=64),
        ModelFacts("collab", "services.collab:Collab", max_batch_size=4096, max_latency_ms=2, max_queue_rows=16384,
                   timeout_s=10, max_request_rows=4096, max_in_flight=256, max_queue_wait_ms=250, max_body_mb=4,
                   max_request_pixels=0, cpu="500m", memory="512Mi", memory_limit="1Gi",
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


# --- container images: what images/build.sh asks ---------------------------------------------------

_ROOT = Path(__file__).resolve().parents[1]
# What an image installs: `serve` (CPU), `gpu` (onnxruntime-gpu), `fastai` (serve + train: the fastai
# runtime's image) and `train` (the training image), each on top of pyproject.toml's dependencies.
EXTRAS = ("serve", "gpu", "fastai", "train")


def image_requirements(extra: str = "serve", pyproject: Path | None = None) -> list[str]:
    """pyproject.toml's dependencies plus one extra: what an image installs (see EXTRAS).

    `gpu` takes CUDA and cuDNN as wheels (onnxruntime-gpu[cuda,cudnn]), so no CUDA base image is needed.
    """
    import tomllib

    if extra not in EXTRAS:
        raise SystemExit(f"unknown image extra {extra!r}; images install one of {list(EXTRAS)}")
    project = tomllib.loads((pyproject or _ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    reqs = set(project.get("dependencies", [])) | set(extras["serve"] + extras["train"] if extra == "fastai" else extras[extra])
    if extra == "gpu":
        reqs = {r.replace("onnxruntime-gpu", "onnxruntime-gpu[cuda,cudnn]", 1) if r.startswith("onnxruntime-gpu") else r
                for r in reqs}
    return sorted(reqs, key=lambda r: (r.lower(), r))


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m services.registry", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    service = sub.add_parser("service", help="print what `bentoml serve` takes for a model (module:Class)")
    service.add_argument("model")
    requirements = sub.add_parser("requirements", help="print an image's requirements, one a line")
    requirements.add_argument("--extra", choices=EXTRAS, default="serve")
    args = parser.parse_args(argv)

    if args.command == "service":
        print(facts_for(args.model).service)
    else:
        print("\n".join(image_requirements(args.extra)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
