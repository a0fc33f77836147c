"""Every lesson model's facts, in one place.

Serving reads its defaults here (services/settings.py); the Makefile's model list, the bentofiles,
the chart's per-model defaults and the training Jobs are checked against it
(tests/services/test_registry.py). A new model is one entry here, one recipe and one service file.
"""

from __future__ import annotations

from dataclasses import dataclass


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


MODELS: dict[str, ModelFacts] = {
    facts.name: facts
    for facts in (
        ModelFacts("bird", "services.bird:Bird", max_batch_size=32, max_latency_ms=10, max_queue_rows=256,
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
        raise SystemExit(f"unknown model {model!r}; Roost serves {sorted(MODELS)}") from None
