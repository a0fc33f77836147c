"""One process tree per model server, several workers: it listens only where it was told to,
never unpickles a request, and its metrics add up across workers."""

import os
import pickle
import re
import stat

import httpx
import numpy as np
import psutil
import pytest

from tests.conftest import BIRD_EXAMPLES
from tests.server import start_server

pytestmark = pytest.mark.slow

PHOTO = BIRD_EXAMPLES / "bird.jpg"


@pytest.fixture(scope="module")
def server(bird_bundle, tmp_path_factory):
    srv = start_server("services.bird:Bird", bird_bundle, tmp_path_factory.mktemp("bird-2w"), {"ROOST_WORKERS": "2"})
    yield srv
    srv.stop()


def process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def test_the_process_tree_listens_only_on_the_http_and_grpc_addresses_it_was_given(server):
    listening = set()
    unix_paths = set()
    for proc in process_tree(server.proc.pid):
        for conn in proc.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                listening.add((conn.laddr.ip.removeprefix("::ffff:"), conn.laddr.port))
        for conn in proc.net_connections(kind="unix"):
            if conn.laddr:
                unix_paths.add(conn.laddr)
    assert listening == {("127.0.0.1", server.port), ("127.0.0.1", server.grpc_port)}, listening
    for path in unix_paths:  # the arbiter's control sockets: in a folder only this user can enter
        folder = os.path.dirname(path)
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, (path, oct(os.stat(folder).st_mode))


class Exploit:
    """Unpickling this creates a file: proof that a server loaded it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("route", ["/predict", "/predict_batch", "/v2/models/bird/infer"])
@pytest.mark.parametrize("content_type", ["application/vnd.bentoml+pickle", "Application/VND.BentoML+Pickle; x=1",
                                          "application/x-python-pickle"])
def test_a_pickle_body_is_refused_without_being_loaded(server, tmp_path, route, content_type):
    marker = tmp_path / "unpickled"
    body = pickle.dumps(Exploit(marker))
    r = httpx.post(f"{server.url}{route}", content=body, headers={"content-type": content_type}, timeout=30)
    assert r.status_code == 415, (r.status_code, r.text)
    assert "error" in r.json()
    assert not marker.exists()


def test_several_workers_share_the_grpc_port_and_their_metrics_add_up(server):
    import tritonclient.grpc as grpcclient

    def sample(text: str, name: str, labels: str) -> float:
        found = re.search(rf"^{name}\{{{labels}\}} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    ok = 'model="bird",outcome="ok",protocol="{}"'
    before = server.metrics()
    for _ in range(12):
        assert httpx.post(f"{server.url}/predict", files={"image": ("b.jpg", PHOTO.read_bytes())}, timeout=60).status_code == 200
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    for _ in range(6):
        inp = grpcclient.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([PHOTO.read_bytes()], dtype=object))
        assert client.infer("bird", [inp]).as_numpy("label")[0] == b"bird"
    after = server.metrics()
    assert sample(after, "roost_requests_total", ok.format("http")) - sample(before, "roost_requests_total", ok.format("http")) == 12
    assert sample(after, "roost_requests_total", ok.format("oip_grpc")) - sample(before, "roost_requests_total", ok.format("oip_grpc")) == 6
    assert sample(after, "roost_requests_in_flight", 'model="bird"') == 0
    assert sample(after, "roost_queue_rows", 'model="bird"') == 0
    info = re.findall(r"^roost_model_info\{.*\} (\S+)$", after, re.M)
    assert info == ["1.0"], info  # one series, not one per worker
    workers = [p for p in process_tree(server.proc.pid)[1:] if "--fd" in " ".join(p.cmdline())]
    assert len(workers) == 2
