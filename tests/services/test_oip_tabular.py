"""Open Inference Protocol against the real tabular (ADULT) server, driven by tritonclient.

One tensor per column: BYTES for categories, numbers for continuous columns (NaN: missing).
Set ROOST_TEST_BUNDLE_TABULAR=<bundle dir> to reuse a bundle instead of training a quick one.
"""

import csv

import numpy as np
import pytest

from tests.services.oip_helpers import (
    check_protocol_metrics, counters, expect_error, grpc_client, grpc_stub, http_client, make_input,
    post_typed, text, typed_outputs,
)
from tests.services.tabular_collab_helpers import ADULT_CSV

pytestmark = pytest.mark.slow

CATS = ["workclass", "education", "marital-status", "occupation", "relationship", "race"]
CONTS = ["age", "fnlwgt", "education-num"]


def adult_rows(n_complete: int = 4) -> list[dict]:
    """Real rows of adult.csv: some complete ones and one with a missing education-num."""
    complete, missing = [], []
    with open(ADULT_CSV, newline="") as fh:
        for row in csv.DictReader(fh):
            record = {c: (row[c] if row[c] != "" else None) for c in CATS + CONTS}
            target = missing if record["education-num"] is None else complete
            target.append(record)
            if len(complete) >= n_complete and missing:
                break
    return complete[:n_complete] + missing[:1]


ROWS = adult_rows()


@pytest.fixture(scope="module")
def bundle(bundle_of):
    return bundle_of("tabular")


@pytest.fixture(scope="module")
def server(server_of):
    return server_of("tabular")


@pytest.fixture(scope="module")
def spec(bundle):
    from services.bundle import open_bundle

    return open_bundle(bundle, verify=False).spec


@pytest.fixture(scope="module")
def typed(server):
    return post_typed(f"{server.url}/predict_batch", "rows", ROWS)


def columns(module, rows, binary=True, grpc_types=False):
    inputs = []
    for c in CATS:
        inputs.append(make_input(module, c, "BYTES", np.array([(r[c] or "").encode() for r in rows], dtype=object), binary))
    age = np.array([int(r["age"]) for r in rows], dtype=np.int64)
    fnlwgt = np.array([float(r["fnlwgt"]) for r in rows], dtype=np.float64)
    edu = np.array([np.nan if r["education-num"] is None else float(r["education-num"]) for r in rows], dtype=np.float32)
    inputs += [make_input(module, "age", "INT64", age, binary), make_input(module, "fnlwgt", "FP64", fnlwgt, binary),
               make_input(module, "education-num", "FP32", edu, binary)]
    return inputs


def assert_same(salary, probabilities, typed, spec):
    assert text(salary) == [t["salary"] for t in typed]
    expected = [[t["probabilities"][c] for c in spec.vocab] for t in typed]
    np.testing.assert_allclose(np.asarray(probabilities, dtype=np.float64), expected, atol=1e-6)


def test_health_and_metadata(server, bundle, spec):
    h, g = http_client(server), grpc_client(server)
    assert h.is_server_ready() and h.is_model_ready("tabular", bundle.name) and g.is_model_ready("tabular")
    meta = h.get_model_metadata("tabular")
    assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [(c, "BYTES") for c in CATS] + [(c, "FP32") for c in CONTS]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [
        ("salary", "BYTES", [-1]), ("probability", "FP32", [-1]), ("probabilities", "FP32", [-1, len(spec.vocab)])]
    assert g.get_model_metadata("tabular", as_json=True)["name"] == "tabular"


def test_http_and_grpc_equal_typed(server, typed, spec):
    import tritonclient.grpc as tg
    import tritonclient.http as th

    before = counters(server, "tabular")
    r = http_client(server).infer("tabular", columns(th, ROWS))
    assert_same(r.as_numpy("salary"), r.as_numpy("probabilities"), typed, spec)
    r = grpc_client(server).infer("tabular", columns(tg, ROWS))
    assert_same(r.as_numpy("salary"), r.as_numpy("probabilities"), typed, spec)
    complete = [i for i, row in enumerate(ROWS) if row["education-num"] is not None]  # JSON has no NaN
    r = http_client(server).infer("tabular", columns(th, [ROWS[i] for i in complete], binary=False),
                                  outputs=[th.InferRequestedOutput("salary", binary_data=False),
                                           th.InferRequestedOutput("probabilities", binary_data=False)])
    assert_same(r.as_numpy("salary"), r.as_numpy("probabilities"), [typed[i] for i in complete], spec)
    check_protocol_metrics(server, "tabular", before, http_ok=2, grpc_ok=1)


def test_grpc_typed_contents_equal_typed(server, typed, spec):
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="tabular")
    for c in CATS:
        t = request.inputs.add(name=c, datatype="BYTES", shape=[len(ROWS)])
        t.contents.bytes_contents.extend((r[c] or "").encode() for r in ROWS)
    request.inputs.add(name="age", datatype="INT64", shape=[len(ROWS)]).contents.int64_contents.extend(int(r["age"]) for r in ROWS)
    request.inputs.add(name="fnlwgt", datatype="FP64", shape=[len(ROWS)]).contents.fp64_contents.extend(float(r["fnlwgt"]) for r in ROWS)
    request.inputs.add(name="education-num", datatype="FP32", shape=[len(ROWS)]).contents.fp32_contents.extend(
        float("nan") if r["education-num"] is None else float(r["education-num"]) for r in ROWS)
    channel, stub = grpc_stub(server)
    with channel:
        out = typed_outputs(stub.ModelInfer(request, timeout=60))
    assert_same(out["salary"], out["probabilities"], typed, spec)


def test_errors(server):
    import tritonclient.grpc as tg
    import tritonclient.http as th

    h, g = http_client(server), grpc_client(server)
    expect_error(lambda: h.infer("adult", columns(th, ROWS)), "404")
    expect_error(lambda: g.infer("adult", columns(tg, ROWS)), "StatusCode.NOT_FOUND")
    as_text = columns(th, ROWS)[:-3] + [make_input(th, "age", "BYTES", np.array([b"49"] * len(ROWS), dtype=object))]
    assert "datatype BYTES" in expect_error(lambda: h.infer("tabular", as_text), "400")
    two_d = columns(tg, ROWS)[:-1] + [make_input(tg, "education-num", "FP32", np.ones((len(ROWS), 2), np.float32))]
    assert "shape" in expect_error(lambda: g.infer("tabular", two_d), "StatusCode.INVALID_ARGUMENT")
    ragged = columns(tg, ROWS)[:-1] + [make_input(tg, "education-num", "FP32", np.ones(len(ROWS) + 1, np.float32))]
    assert "batch sizes" in expect_error(lambda: g.infer("tabular", ragged), "StatusCode.INVALID_ARGUMENT")
    no_age = [i for i in columns(th, ROWS) if i.name() != "age"]
    assert "age" in expect_error(lambda: h.infer("tabular", no_age), "400")  # the model's own 422, as 400
