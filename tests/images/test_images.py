"""The serving images, run the way the Helm chart runs them: podman on 127.0.0.1 only.

Each image under test (IMAGE_MODELS, default bird: `make image-test IMAGE_MODELS="bird tabular"`) is the
one `make image-<model>` built, named as the chart names it ($IMAGE_REPO/roost-<model>:$IMAGE_TAG). A
missing image is built first (images/base.sh, images/build.sh). The container gets exactly what the
rendered Deployment gives it: command, args, env, user, read-only root with /tmp writable, no
capabilities, no privilege escalation, its ports (published on 127.0.0.1 only), probe paths and grace
period. Two modes, as the chart's `modelSource.type`:

- baked: the image's own bundle. If `make image-<model>` baked none, an image with the session's quick
  bundle baked in is built by the same script and removed afterwards.
- mounted: the quick bundle's root mounted read-only at the chart's PVC mount path (/models).

Each container is started detached; its id is kept and it is stopped and removed in a finally. The
figures (size, cold start, RSS) go to build/image-figures.json for docs/deploy.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.bundle import MANIFEST_FILE, find_latest
from services.registry import MODELS
from tests.conftest import BIRD_EXAMPLES, ROOT
from tests.server import free_port

MISSING = [tool for tool in ("podman", "buildah") if shutil.which(tool) is None]
if MISSING and os.environ.get("ROOST_REQUIRE_CONTAINERS"):  # CI installs them: there, missing tools fail
    raise RuntimeError(f"ROOST_REQUIRE_CONTAINERS is set and {' and '.join(MISSING)} is not installed")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"{' and '.join(MISSING)} not installed (apt-get install -y buildah podman runc debootstrap)"),
]

# As stack.md "Containers" found on this kind of machine: vfs storage, runc, explicit ulimits.
PODMAN = ["podman", "--storage-driver", "vfs", "--runtime", "runc"]
ULIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
IMAGE_MODELS = os.environ.get("IMAGE_MODELS", "bird").split()
IMAGE_REPO = os.environ.get("IMAGE_REPO", "ghcr.io/roost-ml")
CHART_YAML = ROOT / "charts" / "roost" / "Chart.yaml"
FIGURES = ROOT / "build" / "image-figures.json"
MODES = ("baked", "mounted")


def app_version() -> str:
    import yaml

    return str(yaml.safe_load(CHART_YAML.read_text())["appVersion"])


IMAGE_TAG = os.environ.get("IMAGE_TAG") or app_version()


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def image_name(model: str) -> str:
    return f"{IMAGE_REPO}/roost-{model}:{IMAGE_TAG}"


def inspect(image: str) -> dict:
    return json.loads(podman("image", "inspect", image).stdout)[0]


def image_exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def build(model: str, **env: str) -> None:
    """images/build.sh serve <model> (after images/base.sh when the base is the local one)."""
    full = {**os.environ, "IMAGE_REPO": IMAGE_REPO, "IMAGE_TAG": IMAGE_TAG, **env}
    base = full.get("BASE_IMAGE", "localhost/roost-base:bookworm")
    steps = ([["images/base.sh", base]] if base.startswith("localhost/roost-base") else []) + [["images/build.sh", "serve", model]]
    for step in steps:
        result = subprocess.run(step, cwd=ROOT, env=full, capture_output=True, text=True, timeout=1800)
        assert result.returncode == 0, f"{' '.join(step)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


def record(model: str, mode: str, **figures) -> None:
    FIGURES.parent.mkdir(exist_ok=True)
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data.setdefault(f"{model}/{mode}", {}).update(figures, when=time.strftime("%Y-%m-%d %H:%M"))
    FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# --- what each model is asked ------------------------------------------------------------------------

def png_bytes(width: int = 96, height: int = 64) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


ADULT_ROW = {"age": 49, "workclass": "Private", "fnlwgt": 101320, "education": "Assoc-acdm", "education-num": 12,
             "marital-status": "Married-civ-spouse", "occupation": "Prof-specialty", "relationship": "Wife", "race": "White"}


def typed_request(model: str) -> dict:
    """httpx.post keyword arguments for one typed /predict request."""
    if model == "bird":
        return {"files": {"image": ("bird.jpg", (BIRD_EXAMPLES / "bird.jpg").read_bytes())}}
    if model == "segment":
        return {"files": {"image": ("x.png", png_bytes())}}
    if model == "tabular":
        return {"json": {"row": ADULT_ROW}}
    return {"json": {"pairs": [{"user": 1, "movie": 1}]}}


def oip_inputs(model: str, module) -> list:
    """tritonclient (http or grpc module) inputs for one OIP infer of one row."""

    def tensor(name, datatype, values):
        array = np.array(values, dtype=object if datatype == "BYTES" else None)
        inp = module.InferInput(name, list(array.shape), datatype)
        inp.set_data_from_numpy(array.astype(np.float32) if datatype == "FP32" else array.astype(np.int64) if datatype == "INT64" else array)
        return inp

    if model == "bird":
        return [tensor("image", "BYTES", [(BIRD_EXAMPLES / "bird.jpg").read_bytes()])]
    if model == "segment":
        return [tensor("image", "BYTES", [png_bytes()])]
    if model == "tabular":
        numbers = {"age", "fnlwgt", "education-num"}
        return [tensor(k, "FP32", [v]) if k in numbers else tensor(k, "BYTES", [v.encode()]) for k, v in ADULT_ROW.items()]
    return [tensor("user", "INT64", [1]), tensor("movie", "INT64", [1])]


# --- the chart's view of a model ---------------------------------------------------------------------

@dataclass
class ChartPod:
    container: dict
    spec: dict
    test_pod: dict

    @property
    def env(self) -> dict[str, str]:
        return {e["name"]: e["value"] for e in self.container["env"]}

    def port(self, name: str) -> int:
        return next(p["containerPort"] for p in self.container["ports"] if p["name"] == name)

    @property
    def grace(self) -> int:
        return self.spec["terminationGracePeriodSeconds"]


@pytest.fixture(scope="session")
def chart_pod(render):
    """chart_pod(model, mode, version) -> the Deployment's container as `helm template` renders it; mounted:
    modelSource.type=pvc (the claim at /models) with bundleVersion pinned, as the chart requires."""

    def get(model: str, mode: str, version: str = "") -> ChartPod:
        args = ["--set", f"models.{model}.enabled=true",
                "--set", f"models.{model}.image.repository={image_name(model).rsplit(':', 1)[0]}",
                "--set", f"models.{model}.image.tag={IMAGE_TAG}"]
        args += [a for other in MODELS if other != model for a in ("--set", f"models.{other}.enabled=false")]
        if mode == "mounted":
            args += ["--set", "modelSource.type=pvc", "--set", f"models.{model}.bundleVersion={version}"]
        rendered = render(*args)
        [dep] = [d for d in rendered.kind("Deployment") if d["metadata"]["name"] == f"roost-{model}"]
        [test_pod] = [d for d in rendered.kind("Pod") if d["metadata"]["labels"]["app.kubernetes.io/component"] == model]
        spec = dep["spec"]["template"]["spec"]
        [container] = spec["containers"]
        return ChartPod(container, spec, test_pod)

    return get


# --- images and containers ---------------------------------------------------------------------------

@pytest.fixture(scope="session")
def images(bundle_of):
    """images(model, mode) -> (image name, bundle version it serves, mounted artifacts root or None)."""
    made: dict = {}
    baked_for_tests: list[str] = []

    def get(model: str, mode: str):
        key = (model, mode)
        if key in made:
            return made[key]
        image = image_name(model)
        if not image_exists(image):
            build(model)  # what `make image-<model>` does
        labels = inspect(image)["Config"]["Labels"]
        if mode == "baked":
            if labels["org.roost.bundle"] == "none":  # built for a mounted volume: bake the quick bundle
                image = f"{image_name(model)}-baked-test-{os.getpid()}"
                build(model, IMAGE=image, BUNDLE=str(bundle_of(model)))
                baked_for_tests.append(image)
                labels = inspect(image)["Config"]["Labels"]
            made[key] = (image, labels["org.roost.bundle"], None)
        else:
            root = bundle_of(model).parent.parent
            made[key] = (image, find_latest(root, model).name, root)
        return made[key]

    yield get
    for image in baked_for_tests:
        podman("rmi", image, check=False)


@dataclass
class Container:
    id: str
    image: str
    model: str
    mode: str
    version: str
    ports: dict[str, int]
    chart: ChartPod
    cold_start_s: float = 0.0  # `podman run` to ready: creating the container (vfs copies the image) + start
    started_to_ready_s: float = 0.0  # the process started to ready: what a pod's startup probe waits for

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    def logs(self) -> str:
        return podman("logs", self.id, check=False).stdout[-4000:] + podman("logs", self.id, check=False).stderr[-4000:]

    def state(self) -> dict:
        return json.loads(podman("inspect", self.id).stdout)[0]["State"]

    def rss_bytes(self) -> int:
        """Resident memory of every process in the container (from the host's /proc)."""
        pid = self.state()["Pid"]
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError):
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                    children.setdefault(ppid, []).append(int(entry.name))
        total, todo = 0, [pid]
        while todo:
            p = todo.pop()
            todo += children.get(p, [])
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{p}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total


def started_at(stamp: str) -> float:
    """podman's State.StartedAt (RFC 3339, nanoseconds, or Go's "2006-01-02 15:04:05.999 -0700 UTC") -> epoch."""
    import datetime as dt

    m = re.match(r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:\.(\d+))?\s*(Z|[+-]\d\d:?\d\d)?", stamp)
    assert m, stamp
    day, clock, frac, zone = m.groups()
    zone = "+00:00" if zone in (None, "Z") else zone if ":" in zone else f"{zone[:3]}:{zone[3:]}"
    when = dt.datetime.fromisoformat(f"{day}T{clock}.{(frac or '0')[:6].ljust(6, '0')}{zone}")
    return when.timestamp()


def podman_run_args(chart: ChartPod, image: str, ports: dict[str, int], mounted_root: Path | None) -> list[str]:
    """The chart's container as `podman run` arguments (published on 127.0.0.1 only)."""
    c, pod = chart.container, chart.spec["securityContext"]
    sc = c["securityContext"]
    user = f"{sc.get('runAsUser', pod.get('runAsUser'))}:{sc.get('runAsGroup', pod.get('runAsGroup'))}"
    args = ["run", "-d", *ULIMITS, "--user", user, "--stop-timeout", str(chart.grace), "--network", "bridge"]
    if sc["readOnlyRootFilesystem"]:
        args += ["--read-only", "--read-only-tmpfs=false"]
    if "ALL" in sc["capabilities"]["drop"]:
        args += ["--cap-drop=ALL"]
    if sc["allowPrivilegeEscalation"] is False:
        args += ["--security-opt", "no-new-privileges"]
    volumes = {v["name"]: v for v in chart.spec["volumes"]}
    for mount in c["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            args += ["--tmpfs", f"{mount['mountPath']}:rw,mode=1777,size={volume['emptyDir'].get('sizeLimit', '1Gi').replace('Gi', 'g').replace('Mi', 'm')}"]
        elif "persistentVolumeClaim" in volume:
            assert mounted_root is not None and mount.get("readOnly") is True
            args += ["-v", f"{mounted_root}:{mount['mountPath']}:ro"]
    for name, host_port in ports.items():
        args += ["-p", f"127.0.0.1:{host_port}:{chart.port(name)}"]
    for key, value in chart.env.items():
        args += ["-e", f"{key}={value}"]
    args += ["--entrypoint", json.dumps(c["command"]), image, *c["args"]]
    return args


@pytest.fixture(scope="module", params=[(m, mode) for m in IMAGE_MODELS for mode in MODES], ids=lambda p: f"{p[0]}-{p[1]}")
def container(request, images, chart_pod, tmp_path_factory):
    model, mode = request.param
    assert model in MODELS, f"IMAGE_MODELS names {model!r}; Roost serves {list(MODELS)}"
    image, version, root = images(model, mode)
    chart = chart_pod(model, mode, version)
    if root is not None:  # what the PVC holds, readable by the chart's user as the training Jobs leave it
        copy = tmp_path_factory.mktemp(f"{model}-pvc")
        shutil.copytree(root / model / version, copy / model / version)
        subprocess.run(["chmod", "-R", "a+rX", str(copy)], check=True)
        root = copy
    ports = {"http": free_port(), "grpc": free_port()}
    start = time.monotonic()
    cid = podman(*podman_run_args(chart, image, ports, root)).stdout.strip()
    box = Container(cid, image, model, mode, version, ports, chart)
    try:
        probe = chart.container["startupProbe"]
        deadline = start + probe["periodSeconds"] * probe["failureThreshold"]
        path = probe["httpGet"]["path"]
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(box.url + path, timeout=probe["timeoutSeconds"]).status_code == 200:
                    break
            state = box.state()
            if not state["Running"] or time.monotonic() > deadline:
                pytest.fail(f"{image} ({mode}) never became ready (running={state['Running']}, exit {state['ExitCode']}):\n{box.logs()}")
            time.sleep(0.2)
        box.cold_start_s = time.monotonic() - start
        box.started_to_ready_s = time.time() - started_at(box.state()["StartedAt"])
        yield box
    finally:
        podman("stop", "--time", "5", cid, check=False, timeout=60)
        podman("rm", "--force", cid, check=False, timeout=60)


# --- the tests ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", IMAGE_MODELS)
def test_the_chart_runs_what_the_image_declares(model, images, chart_pod):
    """Image name, user, ports, command, working dir and every shared variable agree with the chart."""
    image, version, _ = images(model, "mounted")  # the image `make image-<model>` built
    config = inspect(image)["Config"]
    env = dict(e.split("=", 1) for e in config["Env"])
    for mode in MODES:
        chart = chart_pod(model, mode, version)
        c = chart.container
        assert c["image"] == image
        pod, sc = chart.spec["securityContext"], c["securityContext"]
        assert config["User"] == f"{sc.get('runAsUser', pod['runAsUser'])}:{sc.get('runAsGroup', pod['runAsGroup'])}" == "10001:10001"
        assert set(config["ExposedPorts"]) == {f"{c['ports'][0]['containerPort']}/tcp", f"{c['ports'][1]['containerPort']}/tcp"} == {"3000/tcp", "8001/tcp"}
        # The chart runs `bentoml serve <service> --host=0.0.0.0 --port=<http>` in the image's working dir;
        # the image's own command serves the same service on the same port.
        assert "workingDir" not in c and config["WorkingDir"] == "/opt/roost"
        assert c["command"] == ["bentoml", "serve"] and c["args"][0] == env["ROOST_SERVICE"] == MODELS[model].service
        assert f"--port={chart.port('http')}" in c["args"] and f"--port {chart.port('http')}" in config["Cmd"][-1]
        assert chart.env["ROOST_GRPC_PORT"] == env["ROOST_GRPC_PORT"] == str(chart.port("grpc"))
        shared = set(chart.env) & set(env)
        assert {"HOME", "BENTOML_HOME", "BENTOML_DO_NOT_TRACK", "ROOST_ARTIFACTS", "ROOST_GRPC_PORT"} <= shared
        if mode == "baked":
            assert {k: chart.env[k] for k in shared} == {k: env[k] for k in shared}
        else:  # the PVC mount is the artifacts root instead of the image's own
            mount = next(m for m in c["volumeMounts"] if m["name"] == "models")
            assert chart.env["ROOST_ARTIFACTS"] == mount["mountPath"] and mount["readOnly"] is True
            assert chart.env["ROOST_BUNDLE"] == f"{mount['mountPath']}/{model}/{version}"
            assert {k: chart.env[k] for k in shared - {"ROOST_ARTIFACTS"}} == {k: env[k] for k in shared - {"ROOST_ARTIFACTS"}}
        # Everything written at run time lies under the chart's writable /tmp.
        tmp = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "tmp")
        assert env["HOME"].startswith(tmp) and env["BENTOML_HOME"].startswith(tmp) and sc["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("kind, values", [("gpu", ["--set", "models.{m}.gpu=1"]), ("fastai", ["--set", "models.{m}.runtime=fastai", "--set", "bundleSigning.trustedKeySecret=roost-bundle-key"])])
@pytest.mark.parametrize("model", IMAGE_MODELS)
def test_gpu_and_fastai_pods_name_the_variant_make_builds(model, kind, values, render):
    """gpu > 0 and runtime: fastai select `<tag>-gpu` / `<tag>-fastai`, the names `make image-gpu-<model>` and
    `make image-fastai-<model>` give; where that image was built here, its user, ports and paths agree too."""
    repo = image_name(model).rsplit(":", 1)[0]
    rendered = render("--set", f"models.{model}.enabled=true", "--set", f"models.{model}.image.repository={repo}",
                      *[v.format(m=model) for v in values])
    [dep] = [d for d in rendered.kind("Deployment") if d["metadata"]["labels"]["app.kubernetes.io/component"] == model]
    [c] = dep["spec"]["template"]["spec"]["containers"]
    assert c["image"] == f"{image_name(model)}-{kind}"
    if image_exists(c["image"]):
        config = inspect(c["image"])["Config"]
        env = dict(e.split("=", 1) for e in config["Env"])
        chart_env = {e["name"]: e["value"] for e in c["env"]}
        assert config["User"] == "10001:10001" and set(config["ExposedPorts"]) == {"3000/tcp", "8001/tcp"}
        assert config["Labels"]["org.roost.extra"] == kind
        assert all(env[k] == chart_env[k] for k in ("HOME", "BENTOML_HOME", "ROOST_ARTIFACTS", "ROOST_GRPC_PORT"))


@pytest.mark.parametrize("model", IMAGE_MODELS)
def test_the_image_holds_no_training_stack_no_compiler_no_data(model, images):
    image, _, _ = images(model, "baked")
    config = inspect(image)
    labels = config["Config"]["Labels"]
    assert labels["org.roost.model"] == model and labels["org.roost.extra"] == "serve"
    script = r"""
import importlib.util, json, os, re, shutil, sys
found = {"modules": [m for m in ("torch", "torchvision", "fastai", "fastcore", "timm", "onnx", "onnxscript", "pip")
                     if importlib.util.find_spec(m)],
         "tools": [t for t in ("gcc", "cc", "c++", "g++", "clang", "make", "ld", "as") if shutil.which(t)],
         "bentoml": shutil.which("bentoml"), "files": [], "artifacts": []}
for top in ("/opt", "/usr", "/srv", "/home", "/root", "/tmp", "/var"):
    for d, _, names in os.walk(top):
        for n in names:
            # data files, except the test fixtures some packages ship (numpy, tornado)
            if n.endswith((".pkl", ".pth", ".pt", ".jpg", ".jpeg", ".csv", ".parquet", ".tgz", ".zip")) \
                    and not d.startswith("/opt/roost/artifacts/") and not re.search(r"/site-packages/.*/tests?(/|$)", d):
                found["files"].append(os.path.join(d, n))
for d, _, names in os.walk("/opt/roost/artifacts"):
    found["artifacts"] += [os.path.join(d, n) for n in names]
found["training"] = os.path.exists("/opt/roost/training")
print(json.dumps(found))
"""
    out = podman("run", "--rm", *ULIMITS, "--network", "none", "--read-only", "--user", "10001:10001",
                 "--entrypoint", "python3", image, "-c", script).stdout
    found = json.loads(out)
    assert found["modules"] == [], found["modules"]
    assert found["tools"] == [], found["tools"]
    assert found["files"] == [] and found["training"] is False, found
    assert found["bentoml"] == "/opt/venv/bin/bentoml"
    version = labels["org.roost.bundle"]
    names = sorted(Path(p).name for p in found["artifacts"])
    assert all(p.startswith(f"/opt/roost/artifacts/{model}/{version}/") for p in found["artifacts"]), found["artifacts"]
    assert "model.onnx" in names and MANIFEST_FILE in names and "learner.pkl" not in names
    size = config["Size"]
    assert size <= 500e6, f"{image} is {size / 1e6:.0f} MB uncompressed"
    record(model, "baked", image_mb=round(size / 1e6))


def test_probes_and_the_helm_test_answer(container):
    c = container.chart.container
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["port"] == "http"
        assert httpx.get(container.url + get["path"], timeout=c[probe]["timeoutSeconds"]).status_code == 200, probe
    # `helm test`: the test Pod's own script, in the model's image (as the chart runs it), against the server.
    t = container.chart.test_pod["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in t["env"]}
    env["ROOST_URL"] = f"http://127.0.0.1:{container.chart.port('http')}"
    exec_args = ["exec", "--user", "10001:10001"] + [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    result = podman(*exec_args, container.id, *t["command"], *t["args"], check=False)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout[-2000:] + result.stderr[-2000:]


def test_typed_oip_rest_and_oip_grpc_answer(container):
    import tritonclient.grpc as tg
    import tritonclient.http as th

    model = container.model
    response = httpx.post(f"{container.url}/predict", timeout=60, **typed_request(model))
    assert response.status_code == 200, response.text
    body = response.json()
    rows = body if isinstance(body, list) else [body]
    assert all(r["model_version"] == container.version for r in rows), body

    rest = th.InferenceServerClient(f"127.0.0.1:{container.ports['http']}", network_timeout=60)
    result = rest.infer(model, oip_inputs(model, th))
    assert result.get_response()["model_version"] == container.version
    assert result.get_response()["outputs"]

    grpc = tg.InferenceServerClient(f"127.0.0.1:{container.ports['grpc']}")
    assert grpc.is_server_ready() and grpc.is_model_ready(model)
    result = grpc.infer(model, oip_inputs(model, tg), client_timeout=60)
    assert result.get_response().model_version == container.version
    assert len(result.get_response().outputs) >= 1

    rss = container.rss_bytes()
    limit = container.chart.container["resources"]["limits"]["memory"]
    limit_bytes = int(limit[:-2]) * (1 << 20 if limit.endswith("Mi") else 1 << 30)
    assert 0 < rss < limit_bytes, f"RSS {rss / 2**20:.0f} MiB vs the chart's limit {limit}"
    record(model, container.mode, run_to_ready_s=round(container.cold_start_s, 1),
           started_to_ready_s=round(container.started_to_ready_s, 1), rss_mib=round(rss / 2**20))


def test_sigterm_under_load_answers_everything_accepted_and_exits_in_the_grace_period(container):
    """A burst is accepted, then SIGTERM (podman stop, as the kubelet does, with the chart's grace
    period): every accepted request is answered 200; requests that arrive later get 503 or no
    connection, never a dropped one; the container exits 0 within terminationGracePeriodSeconds."""
    import tritonclient.grpc.aio as grpcaio

    model = container.model
    stopped: dict = {}
    # A burst the model admits at once (segment holds 8 requests in flight per worker; more get 429).
    admitted = getattr(MODELS[model], "max_in_flight", 18)
    n_typed, n_grpc = min(12, admitted * 2 // 3), min(6, admitted - admitted * 2 // 3)

    t0 = time.monotonic()

    def stop():
        start = time.monotonic()
        stopped["at"] = round(start - t0, 2)
        stopped["result"] = podman("stop", "--time", str(container.chart.grace), container.id, check=False,
                                   timeout=container.chart.grace + 60)
        stopped["seconds"] = time.monotonic() - start

    async def typed(client):
        return await client.post(f"{container.url}/predict", **typed_request(model))

    async def grpc_infer(client):
        result = await client.infer(model, oip_inputs(model, grpcaio), client_timeout=60)
        return result.get_response().model_version

    async def late(client, results):  # keeps asking after SIGTERM, a new connection each time
        while "seconds" not in stopped:
            try:
                r = await client.post(f"{container.url}/predict", timeout=10, headers={"Connection": "close"},
                                      **typed_request(model))
                results.append((r.status_code, round(time.monotonic() - t0, 2)))
            except httpx.ConnectError:
                results.append(("refused", round(time.monotonic() - t0, 2)))
            except httpx.HTTPError as exc:
                results.append((repr(exc), round(time.monotonic() - t0, 2)))
            await asyncio.sleep(0.05)

    async def burst_then_stop():
        grpc = grpcaio.InferenceServerClient(f"127.0.0.1:{container.ports['grpc']}")
        late_results: list = []
        async with httpx.AsyncClient(timeout=60) as client:
            burst = [asyncio.create_task(typed(client)) for _ in range(n_typed)]
            burst += [asyncio.create_task(grpc_infer(grpc)) for _ in range(n_grpc)]
            await asyncio.sleep(0.3)  # sent and accepted; most still queued or batched
            stopper = threading.Thread(target=stop)
            stopper.start()
            async with httpx.AsyncClient(timeout=10) as late_client:
                trickle = asyncio.create_task(late(late_client, late_results))
                results = await asyncio.gather(*burst, return_exceptions=True)
                while stopper.is_alive():
                    await asyncio.sleep(0.1)
                await trickle
        await grpc.close()
        return results, late_results

    results, late_results = asyncio.run(burst_then_stop())
    codes = [getattr(r, "status_code", repr(r)) for r in results[:n_typed]]
    assert codes == [200] * n_typed, codes
    assert results[n_typed:] == [container.version] * n_grpc, results[n_typed:]
    # Requests that arrive after SIGTERM: 503 + Retry-After while draining, refused once the server is
    # gone. Some new connections are closed unanswered while it drains ("ReadError"): the bare server does
    # the same (not the container); in Kubernetes the preStop sleep keeps new traffic away by then.
    outcomes = [r for r, _ in late_results]
    assert set(outcomes) <= {200, 503, "refused", "ReadError('')"}, (stopped, late_results)
    assert stopped["result"].returncode == 0, stopped["result"].stderr
    state = container.state()
    assert state["ExitCode"] == 0, f"exit {state['ExitCode']} (137: killed when the grace period ran out)\n{container.logs()}"
    assert stopped["seconds"] < container.chart.grace, stopped["seconds"]
    record(model, container.mode, sigterm_exit_s=round(stopped["seconds"], 1), grace_s=container.chart.grace,
           late_requests={str(k): outcomes.count(k) for k in set(outcomes)})
