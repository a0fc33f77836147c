from prometheus_client import REGISTRY, generate_latest

from services import metrics


def test_every_public_metric_is_registered_under_its_documented_name():
    metrics.STAGE_SECONDS.labels("bird", "preprocess").observe(0.01)
    metrics.BATCH_SIZE.labels("bird").observe(4)
    metrics.PREDICTIONS.labels("bird", "bird").inc()
    metrics.REQUESTS.labels("bird", "http", "ok").inc()
    metrics.REQUEST_SECONDS.labels("bird", "oip_grpc").observe(0.01)
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


def test_request_timer_observes_refused_and_failed_requests_under_their_protocol():
    labels = {"model": "t", "protocol": "oip_grpc"}
    before = REGISTRY.get_sample_value("roost_request_seconds_count", labels) or 0
    try:
        with metrics.request_timer("t", "oip_grpc"):
            raise RuntimeError
    except RuntimeError:
        pass
    with metrics.request_timer("t", "oip_grpc"):
        pass
    assert REGISTRY.get_sample_value("roost_request_seconds_count", labels) == before + 2
