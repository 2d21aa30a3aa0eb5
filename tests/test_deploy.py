"""Deployment artefacts are valid for the tools that read them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dicomnode.config import load_settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def compose_command() -> list[str]:
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail(
        "neither 'docker compose' nor 'docker-compose' is installed (make test installs docker-compose)"
    )


def test_compose_file_is_valid() -> None:
    result = subprocess.run(
        [*compose_command(), "-f", str(DEPLOY / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"receiver", "gpu-worker", "postgres", "orthanc"} <= set(services)


@pytest.mark.parametrize("unit", ["dicomnode.service", "dicomnode-worker@.service"])
def test_systemd_units_verify(unit: str, tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not available on this machine")
    executable = Path(sys.executable).parent / "dicomnode"
    text = (
        (DEPLOY / "systemd" / unit)
        .read_text()
        .replace("/opt/dicomnode/venv/bin/dicomnode", str(executable))
    )
    name = unit.replace("@.service", "@0.service")
    (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def manifests() -> list[dict]:  # type: ignore[type-arg]
    docs = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def test_kubernetes_manifests_have_the_required_fields() -> None:
    docs = manifests()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {
        ("Deployment", "dicomnode-receiver"),
        ("Deployment", "dicomnode-gpu-worker"),
        ("Service", "dicomnode"),
        ("ConfigMap", "dicomnode-config"),
        ("PersistentVolumeClaim", "dicomnode-storage"),
    } <= kinds
    assert any(d["kind"] == "Secret" for d in docs)
    for doc in docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]
        if doc["kind"] == "Deployment":
            spec = doc["spec"]
            assert (
                spec["selector"]["matchLabels"].items()
                <= spec["template"]["metadata"]["labels"].items()
            )
            for container in spec["template"]["spec"]["containers"]:
                assert container["name"] and container["image"]
    worker = next(d for d in docs if d["metadata"]["name"] == "dicomnode-gpu-worker")
    limits = worker["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    service = next(d for d in docs if d["kind"] == "Service")
    assert any(p["port"] == 11112 for p in service["spec"]["ports"])


def test_shipped_configs_pass_config_check(tmp_path: Path) -> None:
    load_settings(DEPLOY / "dicomnode.example.toml", resolve=False, environ={})
    config_map = next(d for d in manifests() if d["kind"] == "ConfigMap")
    (tmp_path / "cm.toml").write_text(config_map["data"]["dicomnode.toml"])
    load_settings(tmp_path / "cm.toml", resolve=False, environ={})
