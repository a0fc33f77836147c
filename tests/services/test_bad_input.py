"""Every bad input of the chaos matrix (tests/chaos.py), against each model's real server, on every
protocol: a 4xx JSON error naming what is wrong (gRPC: INVALID_ARGUMENT / NOT_FOUND), never a 5xx,
a hang, a traceback or a fetched URL, and a healthy server right after."""

import functools

import pytest

from services.registry import MODELS
from services.settings import settings_for
from tests.chaos import cases, check, healthy


@functools.cache
def model_cases(model: str):
    return cases(model, {"max_body_bytes": settings_for(model).max_body_bytes})


PARAMS = [pytest.param(model, i, id=f"{model}-{case.protocol}-{case.name}")
          for model in MODELS for i, case in enumerate(model_cases(model))]


@pytest.mark.slow
@pytest.mark.parametrize("model, index", PARAMS)
def test_bad_input_gets_a_clear_client_error(server_of, model, index):
    server = server_of(model)
    case = model_cases(model)[index]
    status, text = case.send(server)
    assert check(case, status, text) is None
    assert healthy(server)


def test_the_matrix_covers_every_model_and_protocol():
    for model in MODELS:
        protocols = {case.protocol for case in model_cases(model)}
        assert {"http", "oip_rest", "oip_grpc"} <= protocols, model
