from prometheus_client import REGISTRY, generate_latest

from services import metrics


def test_every_public_metric_is_registered_under_its_documented_name():
    metrics.STAGE_SECONDS.labels("bird", "preprocess").observe(0.01)
    metrics.BATCH_SIZE.labels("bird").observe(4)
    metrics.PREDICTIONS.labels("bird", "bird").inc()
    metrics.REQUESTS.labels("bird", "http", "ok").inc()
    metrics.IN_FLIGHT.labels("bird").inc()
    metrics.IN_FLIGHT.labels("bird").dec()
    metrics.REJECTED.labels("bird", "queue_full").inc()
    metrics.MODEL_INFO.labels("bird", "v1", "onnx", "resnet18", "cpu", "int8", "model.int8.onnx").set(1)
    metrics.QUEUE_ROWS.labels("bird").set(0)
    metrics.QUEUE_SECONDS.labels("bird").observe(0.001)
    metrics.BATCHES.labels("bird", "idle").inc()
    text = generate_latest(REGISTRY).decode()
    for name in metrics.METRIC_NAMES:
        assert f"\n{name}" in text or text.startswith(name) or f"{name}_bucket" in text or f"{name}_total" in text, name


def test_timed_observes_even_when_the_stage_fails():
    before = REGISTRY.get_sample_value("roost_stage_seconds_count", {"model": "t", "stage": "x"}) or 0
    try:
        with metrics.timed("t", "x"):
            raise ValueError
    except ValueError:
        pass
    assert REGISTRY.get_sample_value("roost_stage_seconds_count", {"model": "t", "stage": "x"}) == before + 1
