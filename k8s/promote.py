#!/usr/bin/env python3
"""Promote (or canary, or roll back to) one bundle version of a model: check it, then point the
release at it. Nothing is served until every check passes.

    python k8s/promote.py bird 20261202-090000 --artifacts /models --release roost -n roost [--canary] [--apply]

Checks, in order (any failure: exit 1, nothing changes):
  1. the bundle <artifacts>/<model>/<version>/ opens: manifest valid, every file's sha256 matches;
  2. its signature, when a trusted key is given (--trusted-key or ROOST_TRUSTED_KEY: what the
     chart's bundleSigning mounts);
  3. the metrics gate: each --min-metric / --max-metric NAME=VALUE against manifest.metrics
     (training's validation metrics), e.g. --max-metric error_rate=0.05;
  4. a smoke inference: the model's real service (`bentoml serve`, on 127.0.0.1) on this bundle
     answers /readyz and the chart's `helm test` request (values.yaml models.<m>.test) with 200.
Then it prints (or with --apply runs) the `helm upgrade --reuse-values` that pins the version:
models.<m>.bundleVersion (promotion, canary off), or models.<m>.canary.bundleVersion (--canary).
Rolling back is promoting the previous version again (it is still on the PVC).

In a cluster it runs as a Job (k8s/promotion/job-promote.yaml) in a serving image, which holds the
code (services/, on PYTHONPATH) but no chart and no helm: --chart then names the packaged chart
(`helm package charts/roost`, a .tgz: the `helm test` requests come from its values.yaml) and --helm
a helm binary.
"""

from __future__ import annotations

import argparse
import base64
import os
import shlex
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "services").is_dir():  # the repository; elsewhere (the promotion Job) services/ is on PYTHONPATH
    sys.path.insert(0, str(ROOT))


def png(w: int = 64, h: int = 64) -> bytes:  # the helm test Pod's image
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\0" + bytes(v for x in range(w) for v in (4 * x % 256, 4 * y % 256, 128)) for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def free_ports(n: int) -> list[int]:
    """n distinct free ports (all bound at once, so the kernel cannot hand out one twice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def call(url: str, body: str | None = None, timeout: float = 60) -> int:
    req = urllib.request.Request(url, data=body.encode() if body else None, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        resp.read()
        return resp.status


def chart_values(chart: str) -> dict:
    """The chart's values.yaml: from a chart folder, or from a packaged chart (.tgz, `helm package`)."""
    import tarfile

    import yaml

    path = Path(chart)
    if path.is_dir():
        return yaml.safe_load((path / "values.yaml").read_text())
    with tarfile.open(path) as tgz:  # helm package: <name>/values.yaml
        [member] = [m for m in tgz.getmembers() if m.isfile() and m.name.count("/") == 1 and m.name.endswith("/values.yaml")]
        return yaml.safe_load(tgz.extractfile(member).read())


def smoke(model: str, bundle: Path, env_extra: dict, ready_timeout: float, chart: str) -> None:
    import services
    from services.registry import MODELS

    test = chart_values(chart)["models"][model]["test"]
    code = Path(services.__file__).resolve().parents[1]  # the folder holding services/: the repository or /opt/roost
    port, grpc = free_ports(2)
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, **env_extra, "ROOST_BUNDLE": str(bundle), "ROOST_GRPC_PORT": str(grpc),
               "BENTOML_HOME": f"{tmp}/bentoml", "BENTOML_DO_NOT_TRACK": "True", "PYTHONPATH": str(code)}
        bentoml = Path(sys.executable).parent / "bentoml"
        log = open(f"{tmp}/server.log", "wb")
        proc = subprocess.Popen([str(bentoml), "serve", MODELS[model].service, "--host", "127.0.0.1", "--port", str(port)],
                                cwd=code, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + ready_timeout
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"smoke: the server exited ({proc.returncode}):\n{Path(tmp, 'server.log').read_text()[-2000:]}")
                try:
                    if call(f"{url}/readyz", timeout=2) == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"smoke: not ready after {ready_timeout} s")
                time.sleep(0.5)
            body = (test.get("body") or "").replace("@PNG64@", base64.b64encode(png()).decode()) or None
            try:
                status = call(url + test["path"], body)
            except urllib.error.HTTPError as exc:
                raise SystemExit(f"smoke: POST {test['path']} -> {exc.code} {exc.read()[:300]!r}") from None
            print(f"ok  smoke inference: POST {test['path']} -> {status}")
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("version")
    ap.add_argument("--artifacts", default=os.environ.get("ROOST_ARTIFACTS", "artifacts"), help="the bundle store (the PVC's content)")
    ap.add_argument("--trusted-key", default=os.environ.get("ROOST_TRUSTED_KEY"), help="Ed25519 public key PEM: require a valid signature")
    ap.add_argument("--min-metric", action="append", default=[], metavar="NAME=VALUE", help="gate: manifest.metrics[NAME] >= VALUE")
    ap.add_argument("--max-metric", action="append", default=[], metavar="NAME=VALUE", help="gate: manifest.metrics[NAME] <= VALUE (error_rate, valid_loss)")
    ap.add_argument("--no-smoke", action="store_true", help="skip the smoke inference")
    ap.add_argument("--ready-timeout", type=float, default=180)
    ap.add_argument("--canary", action="store_true", help="set the canary's version instead of the served one")
    ap.add_argument("--release", default="roost")
    ap.add_argument("-n", "--namespace", default="roost")
    ap.add_argument("--chart", default=str(ROOT / "charts" / "roost"), help="the chart folder, or a packaged chart (.tgz)")
    ap.add_argument("--helm", default=os.environ.get("ROOST_HELM", "helm"), help="the helm binary --apply runs")
    ap.add_argument("--apply", action="store_true", help="run the helm upgrade (default: print it)")
    args = ap.parse_args(argv)

    from services.bundle import BundleError, open_bundle
    from services.registry import MODELS

    if args.model not in MODELS:
        raise SystemExit(f"unknown model {args.model!r}; one of {list(MODELS)}")
    bundle = Path(args.artifacts) / args.model / args.version
    try:
        manifest_bytes = None
        if args.trusted_key:
            from services.signing import load_public_key, verified_manifest

            manifest_bytes = verified_manifest(bundle, load_public_key(args.trusted_key))
            print(f"ok  signature: manifest.json signed by {args.trusted_key}")
        opened = open_bundle(bundle, verify=True, manifest_bytes=manifest_bytes)
    except BundleError as exc:
        print(f"REFUSED {bundle}: {exc}", file=sys.stderr)
        return 1
    if opened.name != args.model or opened.version != args.version:
        print(f"REFUSED {bundle}: its manifest says {opened.name}:{opened.version}", file=sys.stderr)
        return 1
    print(f"ok  manifest and sha256 of {len(opened.manifest.files)} files: {bundle}")
    for gates, op in ((args.min_metric, ">="), (args.max_metric, "<=")):
        for gate in gates:
            name, _, bound = gate.partition("=")
            value = opened.manifest.metrics.get(name)
            if value is None or (value < float(bound) if op == ">=" else value > float(bound)):
                print(f"REFUSED {bundle}: metric {name} = {value} fails the gate {op} {bound} (metrics: {opened.manifest.metrics})", file=sys.stderr)
                return 1
            print(f"ok  gate {name} = {value:.4g} {op} {bound}")
    if not args.no_smoke:
        env = {"ROOST_TRUSTED_KEY": args.trusted_key} if args.trusted_key else {}
        try:
            smoke(args.model, bundle, env, args.ready_timeout, args.chart)
        except SystemExit as exc:
            print(f"REFUSED {bundle}: {exc}", file=sys.stderr)
            return 1
    key = f"models.{args.model}"
    sets = ([f"{key}.canary.enabled=true", f"{key}.canary.bundleVersion={args.version}"] if args.canary
            else [f"{key}.bundleVersion={args.version}", f"{key}.canary.enabled=false"])
    cmd = [args.helm, "upgrade", args.release, args.chart, "--namespace", args.namespace, "--reuse-values", "--wait"]
    for s in sets:
        cmd += ["--set", s]
    print(shlex.join(cmd))
    if args.apply:
        return subprocess.run(cmd).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
