"""The Kubernetes manifests: valid against the schema of a current Kubernetes (and of
1.29, the first with native sidecars on by default), and holding the essentials: gRPC
probes on the served port, a grace period above the server's, the shared socket volume,
the replicated case's Service, budget and autoscaler, and the guards on a TCP port beyond
loopback (a NetworkPolicy; for the replicas also a token). The hessd container's arguments are parsed by ``hessd-server``'s own parser."""

from __future__ import annotations

import ipaddress
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from hessd_server.serving.main import parse_config
from hessd_server.serving.server_config import ServerConfig
from hessd_server.serving.grpc.status_interceptor import SERVICE_NAME

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
NAMES = ("sidecar.yaml", "standalone.yaml")
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")

Resource = dict[str, Any]


def _documents(name: str) -> list[Resource]:
    with (MANIFESTS / name).open() as manifest:
        return [document for document in yaml.safe_load_all(manifest) if document]


def _only(name: str, kind: str) -> Resource:
    (resource,) = (document for document in _documents(name) if document["kind"] == kind)
    return resource


def _pod(name: str) -> Resource:
    """The pod template of the manifest's Deployment."""
    return _only(name, "Deployment")["spec"]["template"]


def _all_containers(pod_spec: Resource) -> list[Resource]:
    return [*pod_spec.get("initContainers", ()), *pod_spec["containers"]]


def _hessd(pod_spec: Resource) -> Resource:
    (container,) = (c for c in _all_containers(pod_spec) if c.get("command") == ["hessd-server"])
    return container


def _config(name: str) -> ServerConfig:
    return parse_config(_hessd(_pod(name)["spec"])["args"])


def _probe_port(config: ServerConfig) -> int:
    """The TCP port served on every interface, which the kubelet reaches on the pod IP."""
    (port,) = (
        int(address.rpartition(":")[2])
        for address in config.listen
        if address.rpartition(":")[0] in ("0.0.0.0", "[::]")
    )
    return port


def _beyond_loopback(address: str) -> bool:
    if address.startswith("unix"):
        return False
    host = address.rpartition(":")[0].strip("[]")
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", NAMES)
def test_every_resource_is_valid_for_kubernetes(name: str, version: str) -> None:
    documents = _documents(name)
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)


def test_the_validator_bites() -> None:
    deployment = _only("sidecar.yaml", "Deployment")
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("name", NAMES)
def test_probes_ask_grpc_health_on_the_served_port(name: str) -> None:
    hessd = _hessd(_pod(name)["spec"])
    port = _probe_port(_config(name))
    assert port in [declared["containerPort"] for declared in hessd["ports"]]
    for probe in PROBES:
        handlers = set(hessd[probe]) & {"grpc", "httpGet", "tcpSocket", "exec"}
        assert handlers == {"grpc"}, f"{probe} is not a gRPC probe"
        assert hessd[probe]["grpc"]["port"] == port
    # Readiness (and start-up) waits for every model to be loaded and warm.
    assert hessd["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    assert hessd["startupProbe"]["grpc"]["service"] == SERVICE_NAME


@pytest.mark.parametrize("name", NAMES)
def test_the_grace_period_is_explicit_and_above_the_servers(name: str) -> None:
    pod_spec = _pod(name)["spec"]
    assert any(flag.startswith("--grace-seconds") for flag in _hessd(pod_spec)["args"])
    assert pod_spec["terminationGracePeriodSeconds"] > _config(name).grace_seconds


@pytest.mark.parametrize("name", NAMES)
def test_every_container_has_requests_and_limits(name: str) -> None:
    for container in _all_containers(_pod(name)["spec"]):
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) >= {"cpu", "memory"}, container["name"]


@pytest.mark.parametrize("name", NAMES)
def test_models_come_from_a_read_only_volume(name: str) -> None:
    pod_spec = _pod(name)["spec"]
    mounts = [mount for mount in _hessd(pod_spec)["volumeMounts"] if mount.get("readOnly")]
    config = _config(name)
    sources = [model.source for model in config.models]
    if config.model_repository is not None:
        sources.append(config.model_repository)
    assert sources
    for source in sources:
        path = PurePosixPath(source)
        assert any(path.is_relative_to(mount["mountPath"]) for mount in mounts), source


def test_the_sidecar_shares_a_unix_socket_in_an_emptydir_with_the_app() -> None:
    pod_spec = _pod("sidecar.yaml")["spec"]
    hessd = _hessd(pod_spec)
    # A native sidecar: started before the app, after warm-up; stopped after it.
    assert hessd in pod_spec["initContainers"] and hessd["restartPolicy"] == "Always"
    (socket,) = (address for address in _config("sidecar.yaml").listen if address.startswith("unix"))
    folder = str(PurePosixPath(socket.removeprefix("unix://")).parent)
    (volume,) = (m["name"] for m in hessd["volumeMounts"] if m["mountPath"] == folder)
    assert "emptyDir" in next(v for v in pod_spec["volumes"] if v["name"] == volume)
    (app,) = pod_spec["containers"]
    assert {"name": volume, "mountPath": folder} in app["volumeMounts"]
    assert {"name": "HESSD_TARGET", "value": socket} in app["env"]


def test_the_replicated_case_has_a_headless_service_a_budget_and_an_autoscaler() -> None:
    deployment = _only("standalone.yaml", "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = _only("standalone.yaml", "Service")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == _probe_port(_config("standalone.yaml"))
    budget = _only("standalone.yaml", "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    autoscaler = _only("standalone.yaml", "HorizontalPodAutoscaler")
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert autoscaler["spec"]["minReplicas"] >= 2
    assert [metric["resource"]["name"] for metric in autoscaler["spec"]["metrics"]] == ["cpu"]
    # Callers re-resolve the Service name now and then, and so find added replicas.
    assert _config("standalone.yaml").max_connection_age_seconds is not None


@pytest.mark.parametrize("name", NAMES)
def test_a_network_policy_guards_the_tcp_port_beyond_loopback(name: str) -> None:
    config = _config(name)
    assert any(_beyond_loopback(address) for address in config.listen)
    labels = _pod(name)["metadata"]["labels"]
    port = _probe_port(config)
    (policy,) = (
        document
        for document in _documents(name)
        if document["kind"] == "NetworkPolicy"
        and document["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    )
    assert "Ingress" in policy["spec"]["policyTypes"]
    for rule in policy["spec"].get("ingress", ()):
        admits_port = "ports" not in rule or port in [p["port"] for p in rule["ports"]]
        if admits_port:
            assert rule.get("from"), f"an ingress rule admits every source to port {port}"
            assert all("ipBlock" not in source for source in rule["from"])


def test_the_replicas_take_calls_only_with_a_token_from_a_secret() -> None:
    pod_spec = _pod("standalone.yaml")["spec"]
    token_file = PurePosixPath(_config("standalone.yaml").auth_token_file or "")
    (mount,) = (
        mount
        for mount in _hessd(pod_spec)["volumeMounts"]
        if token_file.is_relative_to(mount["mountPath"])
    )
    assert mount.get("readOnly")
    (volume,) = (v for v in pod_spec["volumes"] if v["name"] == mount["name"])
    assert token_file.relative_to(mount["mountPath"]).parts == ("tokens",)
    assert volume["secret"]["secretName"]


SHARED_READ_MODES = {"ReadOnlyMany", "ReadWriteMany"}
"""PersistentVolumeClaim access modes that pods on several nodes may read at once."""


def test_the_replicas_read_the_models_from_a_claim_that_several_pods_may_read() -> None:
    pod_spec = _pod("standalone.yaml")["spec"]
    repository = PurePosixPath(_config("standalone.yaml").model_repository or "")
    (mount,) = (
        mount
        for mount in _hessd(pod_spec)["volumeMounts"]
        if repository.is_relative_to(mount["mountPath"])
    )
    (volume,) = (v for v in pod_spec["volumes"] if v["name"] == mount["name"])
    claim = volume["persistentVolumeClaim"]
    assert claim["readOnly"] is True and mount["readOnly"] is True
    claims = {
        document["metadata"]["name"]: document
        for document in _documents("standalone.yaml")
        if document["kind"] == "PersistentVolumeClaim"
    }
    assert claim["claimName"] in claims, "the manifest must define the claim its replicas mount"
    modes = set(claims[claim["claimName"]]["spec"]["accessModes"])
    assert modes and modes <= SHARED_READ_MODES, f"{sorted(modes)}: replicas on several nodes cannot all mount it"


@pytest.mark.parametrize("name", NAMES)
def test_the_hessd_image_is_pulled_from_a_registry(name: str) -> None:
    image = _hessd(_pod(name)["spec"])["image"]
    registry, separator, _ = image.partition("/")
    assert separator and ("." in registry or ":" in registry), (
        f"{image}: a locally built image is not on the nodes; push it to a registry and name it here"
    )
