"""The Patroni recipe's files (deploy/patroni, deploy/compose.patroni.yaml,
deploy/kubernetes/patroni), checked with the real tools: ``patroni --validate-config`` (Debian's
Patroni) on patroni.yml with a node's variables, hadolint on its Dockerfile, the compose
specification's schema, kubernetes-validate; and that they are wired to each other (the
ConfigMap is patroni.yml, both nodes are in the service's multi-host URL)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests import pgservers
from tests.deploy.test_deploy_files import (
    DEPLOY,
    KUBERNETES_VERSIONS,
    _compose_validator,
    _documents,
    _hadolint,
)

PATRONI_YML = DEPLOY / "patroni" / "patroni.yml"
MANIFESTS = sorted((DEPLOY / "kubernetes" / "patroni").glob("*.yaml"))
#: What each node sets (compose.patroni.yaml and the StatefulSet), besides its addresses.
NODE_VARIABLES = {
    "PATRONI_NAME",
    "PATRONI_RESTAPI_CONNECT_ADDRESS",
    "PATRONI_POSTGRESQL_CONNECT_ADDRESS",
    "PATRONI_ETCD3_HOSTS",
    "PATRONI_SUPERUSER_PASSWORD",
    "PATRONI_REPLICATION_PASSWORD",
    "PATRONI_REWIND_PASSWORD",
    "COALITION_DB_PASSWORD",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def etcd_stand_in() -> Iterator[str]:
    """A listening loopback port: the validator checks that the etcd hosts are reachable."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def _validate(config: Path, etcd: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    patroni = shutil.which("patroni")
    pgservers.require(patroni is not None, "Debian's patroni")
    assert patroni is not None
    node = {
        "PATRONI_NAME": "pg1",
        "PATRONI_RESTAPI_LISTEN": f"127.0.0.1:{_free_port()}",
        # a name others reach it by (the validator refuses loopback): this machine's
        "PATRONI_RESTAPI_CONNECT_ADDRESS": f"{socket.gethostname()}:8008",
        "PATRONI_POSTGRESQL_LISTEN": f"127.0.0.1:{_free_port()}",
        "PATRONI_POSTGRESQL_CONNECT_ADDRESS": f"{socket.gethostname()}:5432",
        "PATRONI_POSTGRESQL_DATA_DIR": str(tmp_path / "data"),
        "PATRONI_ETCD3_HOSTS": etcd,
        "PATRONI_SUPERUSER_PASSWORD": "x",
        "PATRONI_REPLICATION_PASSWORD": "x",
        "PATRONI_REWIND_PASSWORD": "x",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATRONI_")}
    return subprocess.run(
        [patroni, "--validate-config", str(config)],
        env={**env, **node},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_patroni_yml_passes_patronis_validator(etcd_stand_in: str, tmp_path: Path) -> None:
    run = _validate(PATRONI_YML, etcd_stand_in, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr


def test_patronis_validator_does_refuse_a_bad_config(etcd_stand_in: str, tmp_path: Path) -> None:
    config = yaml.safe_load(PATRONI_YML.read_text())
    del config["bootstrap"]["pg_hba"]
    config["postgresql"]["bin_dir"] = str(tmp_path)  # no pg_ctl there
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(config))
    run = _validate(bad, etcd_stand_in, tmp_path)
    assert run.returncode != 0 and "bin_dir" in run.stdout + run.stderr


def test_the_database_image_passes_hadolint() -> None:
    run = subprocess.run(
        [_hadolint(), "--failure-threshold", "info", str(DEPLOY / "patroni" / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_ha_compose_file_follows_the_specification_and_reaches_both_nodes() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.patroni.yaml").read_text())
    errors = [f"{e.json_path}: {e.message}" for e in _compose_validator().iter_errors(compose)]
    assert errors == []
    services = compose["services"]
    assert set(services) == {"etcd", "pg1", "pg2", "init", "api", "worker"}
    for node in ("pg1", "pg2"):
        assert set(services[node]["environment"]) == NODE_VARIABLES
        assert services[node]["environment"]["PATRONI_NAME"] == node
    url = services["api"]["environment"]["COALITION_DATABASE_URL"]
    assert "host=pg1:5432&host=pg2:5432&target_session_attrs=read-write" in url


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_each_patroni_manifest_validates(path: Path, version: str) -> None:
    for doc in _documents(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_statefulset_runs_patroni_yml_unchanged_with_each_nodes_variables() -> None:
    docs: dict[tuple[str, str], dict[str, Any]] = {
        (d["kind"], d["metadata"]["name"]): d for path in MANIFESTS for d in _documents(path)
    }
    assert docs["ConfigMap", "coalition-patroni"]["data"]["patroni.yml"] == PATRONI_YML.read_text()
    pod = docs["StatefulSet", "coalition-db"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert {e["name"] for e in container["env"]} == NODE_VARIABLES
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert docs["StatefulSet", "coalition-etcd"]["spec"]["replicas"] == 3
