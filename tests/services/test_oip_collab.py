"""Open Inference Protocol against the real collab (MovieLens) server, driven by tritonclient.

`user` and `movie` tensors, INT64 or BYTES; `rating` FP32 and `cold_start` BOOL back.
Set ROOST_TEST_BUNDLE_COLLAB=<bundle dir> to reuse a bundle instead of training a quick one.
"""

import csv

import numpy as np
import pytest

from tests.services.oip_helpers import (
    check_protocol_metrics, counters, expect_error, grpc_client, grpc_stub, http_client, make_input,
    post_typed, typed_outputs,
)
from tests.services.tabular_collab_helpers import RATINGS_CSV

pytestmark = pytest.mark.slow


def rating_pairs(n: int = 5) -> list[dict]:
    with open(RATINGS_CSV, newline="") as fh:
        rows = [r for _, r in zip(range(n), csv.DictReader(fh))]
    return [{"user": int(r["userId"]), "movie": int(r["movieId"])} for r in rows] + [{"user": 10**9, "movie": 1}]


PAIRS = rating_pairs()


@pytest.fixture(scope="module")
def bundle(bundle_of):
    return bundle_of("collab")


@pytest.fixture(scope="module")
def server(server_of):
    return server_of("collab")


@pytest.fixture(scope="module")
def typed(server):
    return post_typed(f"{server.url}/predict", "pairs", PAIRS)


def pair_inputs(module, user_type="INT64", movie_type="INT64", binary=True):
    def tensor(name, datatype):
        values = [p[name] for p in PAIRS]
        if datatype == "BYTES":
            array = np.array([str(v).encode() for v in values], dtype=object)
        else:
            array = np.array(values, dtype={"INT64": np.int64, "INT32": np.int32}[datatype])
        return make_input(module, name, datatype, array, binary)

    return [tensor("user", user_type), tensor("movie", movie_type)]


def assert_same(rating, cold_start, typed):
    np.testing.assert_allclose(np.asarray(rating, dtype=np.float64), [t["rating"] for t in typed], atol=1e-5)
    assert [bool(x) for x in np.asarray(cold_start).reshape(-1)] == [t["cold_start"] for t in typed]


def test_health_and_metadata(server, bundle):
    h, g = http_client(server), grpc_client(server)
    assert h.is_model_ready("collab", bundle.name) and g.is_model_ready("collab")
    meta = h.get_model_metadata("collab")
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("user", "INT64", [-1]), ("movie", "INT64", [-1])]
    assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [("rating", "FP32"), ("cold_start", "BOOL")]


def test_http_and_grpc_equal_typed(server, typed):
    import tritonclient.grpc as tg
    import tritonclient.http as th

    assert typed[-1]["cold_start"] is True
    before = counters(server, "collab")
    h, g = http_client(server), grpc_client(server)
    for user_type, movie_type in (("INT64", "INT64"), ("BYTES", "INT32")):
        r = h.infer("collab", pair_inputs(th, user_type, movie_type))
        assert_same(r.as_numpy("rating"), r.as_numpy("cold_start"), typed)
        r = g.infer("collab", pair_inputs(tg, user_type, movie_type))
        assert_same(r.as_numpy("rating"), r.as_numpy("cold_start"), typed)
    r = h.infer("collab", pair_inputs(th, binary=False), outputs=[th.InferRequestedOutput("rating", binary_data=False),
                                                                    th.InferRequestedOutput("cold_start", binary_data=False)])
    assert_same(r.as_numpy("rating"), r.as_numpy("cold_start"), typed)
    check_protocol_metrics(server, "collab", before, http_ok=3, grpc_ok=2)


def test_grpc_typed_contents_equal_typed(server, typed):
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="collab")
    request.inputs.add(name="user", datatype="INT64", shape=[len(PAIRS)]).contents.int64_contents.extend(p["user"] for p in PAIRS)
    request.inputs.add(name="movie", datatype="BYTES", shape=[len(PAIRS)]).contents.bytes_contents.extend(
        str(p["movie"]).encode() for p in PAIRS)
    channel, stub = grpc_stub(server)
    with channel:
        out = typed_outputs(stub.ModelInfer(request, timeout=60))
    assert_same(out["rating"], out["cold_start"], typed)


def test_errors(server):
    import tritonclient.grpc as tg
    import tritonclient.http as th

    h, g = http_client(server), grpc_client(server)
    expect_error(lambda: h.infer("movies", pair_inputs(th)), "404")
    expect_error(lambda: g.get_model_metadata("movies"), "StatusCode.NOT_FOUND")
    floats = [make_input(th, "user", "FP32", np.ones(len(PAIRS), np.float32)), pair_inputs(th)[1]]
    assert "datatype FP32" in expect_error(lambda: h.infer("collab", floats), "400")
    assert "missing input" in expect_error(lambda: g.infer("collab", pair_inputs(tg)[:1]), "StatusCode.INVALID_ARGUMENT")
    two_d = [make_input(tg, "user", "INT64", np.ones((len(PAIRS), 2), np.int64)), pair_inputs(tg)[1]]
    assert "shape" in expect_error(lambda: g.infer("collab", two_d), "StatusCode.INVALID_ARGUMENT")
