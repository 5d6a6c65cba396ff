"""deploy/kubernetes and deploy/compose run the scaled-out mesh: checked against the real
schemas (kubernetes-validate's Kubernetes OpenAPI schemas; compose-spec, the Compose
specification's parser) and by construction, since no cluster or Docker engine runs here."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from compose_spec import PyCompose

from amelia_cli.mesh import SERVICES
from amelia_common.grpc_client import channel_target
from amelia_common.settings import Settings

DEPLOY = Path(__file__).parents[2] / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
# The oldest Kubernetes the manifests are for (gRPC readiness probes are GA since 1.27).
KUBERNETES_VERSION = "1.30"
GRPC_SERVICES = {spec.name: spec for spec in SERVICES if spec.grpc_service}
NATS_NODES = 3


@functools.cache
def _read_manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """Every Kubernetes object under deploy/kubernetes, with the file it is in (a copy)."""
    return copy.deepcopy(_read_manifests())


def objects(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == kind}


def known_settings(names: set[str]) -> None:
    unknown = names - set(Settings.model_fields)
    assert not unknown, f"not settings of the mesh: {unknown}"


@pytest.mark.parametrize(("file", "doc"), manifests(), ids=lambda v: str(v)[:40])
def test_every_kubernetes_object_matches_its_schema(file: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_catches_a_wrong_field() -> None:
    bad = objects("Deployment")["events"]
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc?"
    with pytest.raises(kubernetes_validate.ValidationError, match="not of type 'integer'"):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_kustomization_applies_every_manifest_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    files = {p.name for p in KUBERNETES.glob("*.yaml")}
    assert set(kustomization["resources"]) == files - {"kustomization.yaml", "secret.example.yaml"}


def test_nats_is_a_three_node_jetstream_cluster_kept_at_quorum() -> None:
    nats = objects("StatefulSet")["nats"]
    assert nats["spec"]["replicas"] == NATS_NODES
    conf = objects("ConfigMap")["nats-config"]["data"]["nats.conf"]
    assert "jetstream" in conf
    for i in range(NATS_NODES):
        assert f"nats://nats-{i}.nats:6222" in conf
    service = objects("Service")["nats"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert objects("PodDisruptionBudget")["nats"]["spec"]["minAvailable"] == NATS_NODES // 2 + 1
    config = objects("ConfigMap")["amelia-config"]["data"]
    assert config["NATS_URL"].split(",") == [
        f"nats://nats-{i}.nats:4222" for i in range(NATS_NODES)
    ]
    assert config["EVENTS_STREAM_REPLICAS"] == config["RUNS_QUEUE_REPLICAS"] == "3"


def test_each_service_runs_replicas_ready_by_its_own_health_and_kept_by_a_budget() -> None:
    deployments, services = objects("Deployment"), objects("Service")
    budgets = objects("PodDisruptionBudget")
    config = objects("ConfigMap")["amelia-config"]["data"]
    known_settings(set(config))
    defaults = Settings(_env_file=None)
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]
        assert deployment["spec"]["replicas"] >= 2, name
        labels = pod["metadata"]["labels"]
        selector = budgets[name]["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), f"the {name} budget selects no pod"
        container = pod["spec"]["containers"][0]
        known_settings({e["name"] for e in container.get("env", [])})
        refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
        assert refs == {"amelia-config", "amelia-secrets"}
        if name in GRPC_SERVICES:
            spec = GRPC_SERVICES[name]
            port = spec.port(defaults)
            probe = container["readinessProbe"]["grpc"]
            assert (probe["port"], probe["service"]) == (port, spec.grpc_service)
            # Clients resolve every ready pod through the headless Service.
            assert services[name]["spec"]["clusterIP"] == "None"
            address = config[f"{name.upper()}_ADDRESS"]
            assert address == f"dns:///{name}:{port}" == channel_target(address)
    assert deployments["agents"]["spec"]["template"]["spec"]["containers"][0]["env"] == [
        {"name": "AGENT_WORKERS", "value": "0"}
    ]
    worker = deployments["agents-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["command"][-1] == "amelia_agents.worker"
    gateway = deployments["gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert services["gateway"]["spec"]["ports"][0]["targetPort"] == 8000


def test_postgresql_is_external_by_url_from_a_secret() -> None:
    secret = objects("Secret")["amelia-secrets"]["stringData"]
    known_settings(set(secret))
    settings = Settings(_env_file=None, DATABASE_URL=secret["DATABASE_URL"])
    assert settings.DATABASE_URL.startswith("postgresql+asyncpg://")
    assert not any(d["kind"] == "StatefulSet" and "postgres" in n for n, d in manifests())


# docker compose --------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    """deploy/compose/docker-compose.yml, checked by the Compose specification's parser.

    PyYAML resolves the file's anchors and merge keys (`<<`) first, as Compose does."""
    resolved = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    parsed = PyCompose.from_yaml(yaml.safe_dump(resolved))
    parsed.validate()
    data: dict[str, Any] = parsed.to_dict()
    return data


def test_compose_runs_replicas_on_a_three_node_nats_cluster() -> None:
    services = compose()["services"]
    nodes = [f"nats-{i}" for i in range(1, NATS_NODES + 1)]
    for node in nodes:
        command = services[node]["command"]
        assert "-js" in command
        assert command[command.index("--server_name") + 1] == node
        routes = command[command.index("--routes") + 1].split(",")
        assert sorted(routes) == [f"nats://{n}:6222" for n in nodes if n != node]
    for name in ("events", "agents", "rag", "gateway", "agents-worker"):
        service = services[name]
        assert service["deploy"]["replicas"] >= 2, name
        assert service["restart"] == "unless-stopped", name  # a service stops itself, see events.md
        env = service["environment"]
        known_settings(set(env))
        assert env["NATS_URL"] == ",".join(f"nats://{n}:4222" for n in nodes)
        assert env["EVENTS_STREAM_REPLICAS"] == env["RUNS_QUEUE_REPLICAS"] == "3"
        for spec in GRPC_SERVICES.values():
            assert (
                env[f"{spec.name.upper()}_ADDRESS"]
                == f"dns:///{spec.name}:{env[spec.port_setting]}"
            )
        assert set(service.get("depends_on", {})) <= set(services)
    assert services["agents"]["environment"]["AGENT_WORKERS"] == "0"
    assert services["agents-worker"]["command"][-1] == "amelia_agents.worker"


def test_compose_volumes_are_declared() -> None:
    data = compose()
    for service in data["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            assert source in data["volumes"], source
