"""deploy/kubernetes: valid objects, offline, that agree with the code and with each other."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from preview_worker import keys, queueing
from preview_worker.cli import cli
from preview_worker.settings import Settings, load_settings

from .conftest import ROOT, AppMaker

KUBERNETES = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
KEDA_SCHEMA = Path(__file__).with_name("keda.schema.json")
# Shows the Secrets' keys with placeholders; deliberately not applied by the kustomization.
SECRET_EXAMPLE = "secret.example.yaml"
KUSTOMIZATION = "kustomization.yaml"
# The oldest Kubernetes the manifests are for (the preStop sleep action is on from 1.30),
# and the newest whose schemas kubernetes-validate ships.
VERSIONS = ("1.30", kubernetes_validate.latest_version())
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
# What the redis scaler takes from a TriggerAuthentication (KEDA's Redis Lists docs).
REDIS_AUTH_PARAMETERS = {
    "address", "host", "port", "username", "password", "tls", "ca", "cert", "key", "keyPassword"
}
# Memory of a worker pod (MiB): the pool, each worker with its render caches at most, and
# the `preview-worker health` probe while it runs.
POOL_MIB, WORKER_MIB, PROBE_MIB = 45, 130, 45


def load_manifests() -> list[tuple[str, dict[str, Any]]]:
    """Return every object of deploy/kubernetes with the name of its file."""
    found = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name != KUSTOMIZATION:
            found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


MANIFESTS = load_manifests()


def objects(kind: str) -> list[dict[str, Any]]:
    """Return the objects of one kind."""
    return [doc for _, doc in MANIFESTS if doc["kind"] == kind]


def one(kind: str, name: str) -> dict[str, Any]:
    """Return the object of a kind and a name."""
    found = [doc for doc in objects(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} named {name}, found {len(found)}"
    return found[0]


def deployments() -> dict[str, dict[str, Any]]:
    """Return the Deployments by their component label: api and worker."""
    return {doc["metadata"]["labels"]["app.kubernetes.io/component"]: doc
            for doc in objects("Deployment")}


def pod_spec(component: str) -> dict[str, Any]:
    """Return the pod template's spec of a Deployment."""
    spec: dict[str, Any] = deployments()[component]["spec"]["template"]["spec"]
    return spec


def container(component: str) -> dict[str, Any]:
    """Return the one container of a Deployment's pods."""
    (only,) = pod_spec(component)["containers"]
    return dict(only)


def service_environment() -> dict[str, str]:
    """Return what the ConfigMaps and the Secrets put in the environment, together."""
    environment: dict[str, str] = {}
    for doc in objects("ConfigMap"):
        environment.update(doc["data"])
    environment.update(one("Secret", "preview-worker-secrets")["stringData"])
    return environment


def manifest_settings() -> Settings:
    """Return the settings the pods start with."""
    return load_settings(service_environment())


class AskedNames(Mapping[str, str]):
    """An empty environment that remembers every name asked of it."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def setting_names() -> set[str]:
    """Return the name of every environment variable the settings module reads."""
    environment = AskedNames()
    load_settings(environment)
    return environment.asked


def quantity(text: str) -> float:
    """Return a Kubernetes quantity in cores (250m, 2) or in MiB (384Mi, 1Gi)."""
    units = {"m": 0.001, "Mi": 1.0, "Gi": 1024.0, "": 1.0}
    match = re.fullmatch(r"([0-9.]+)(m|Mi|Gi|)", text)
    assert match, f"not a quantity this test reads: {text}"
    return float(match[1]) * units[match[2]]


def test_the_kustomization_applies_every_manifest_but_the_secrets() -> None:
    """Given the folder, kustomization.yaml lists each file but the Secrets' example, once."""
    kustomization = yaml.safe_load((KUBERNETES / KUSTOMIZATION).read_text())
    files = {path.name for path in KUBERNETES.glob("*.yaml")} - {KUSTOMIZATION}
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    assert set(resources) == files - {SECRET_EXAMPLE}
    applied = [doc for name, doc in MANIFESTS if name in resources]
    assert not [doc for doc in applied if doc["kind"] == "Secret"], "would overwrite real secrets"
    assert {image["name"] for image in kustomization["images"]} == {
        container(component)["image"].rpartition(":")[0] for component in ("api", "worker")
    }


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "doc", [doc for _, doc in MANIFESTS if doc["kind"] not in KEDA_KINDS],
    ids=lambda doc: f"{doc['kind']}/{doc['metadata']['name']}",
)
def test_kubernetes_objects_are_valid(doc: dict[str, Any], version: str) -> None:
    """Every built-in object matches Kubernetes' own schema, unknown fields refused."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(part) for part in error.path)
        pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {path}: {error.message}")


def keda_validator() -> jsonschema.Draft202012Validator:
    """Return a validator of KEDA's objects from the schema written after KEDA's docs."""
    schema = json.loads(KEDA_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize(
    "doc", [doc for _, doc in MANIFESTS if doc["kind"] in KEDA_KINDS],
    ids=lambda doc: f"{doc['kind']}/{doc['metadata']['name']}",
)
def test_keda_objects_are_valid(doc: dict[str, Any]) -> None:
    """KEDA's objects, which kubernetes-validate does not know, match KEDA's fields."""
    problems = [f"{'.'.join(map(str, error.path))}: {error.message}"
                for error in keda_validator().iter_errors(doc)]
    assert not problems


def broken_scaled_object(change: str) -> dict[str, Any]:
    """Return the ScaledObject with one mistake made in it."""
    doc = copy.deepcopy(one("ScaledObject", "preview-worker"))
    trigger = doc["spec"]["triggers"][0]
    if change == "number, not string":
        trigger["metadata"]["listLength"] = 20
    elif change == "misspelt field":
        trigger["metadata"]["listname"] = trigger["metadata"].pop("listName")
    elif change == "unknown spec field":
        doc["spec"]["maxReplicas"] = 10
    elif change == "no target":
        del doc["spec"]["scaleTargetRef"]
    elif change == "bad auth kind":
        trigger["authenticationRef"]["kind"] = "Secret"
    return doc


@pytest.mark.parametrize(
    "change",
    ["number, not string", "misspelt field", "unknown spec field", "no target", "bad auth kind"],
)
def test_the_keda_schema_refuses_mistakes(change: str) -> None:
    """Given a usual mistake in the ScaledObject, the KEDA schema refuses it."""
    assert not keda_validator().is_valid(broken_scaled_object(change))


def test_every_variable_is_a_setting_with_a_usable_value() -> None:
    """Each ConfigMap or Secret key is a setting the service reads, and they all parse."""
    unknown = set(service_environment()) - setting_names()
    assert not unknown, f"not settings: {sorted(unknown)}"
    settings = manifest_settings()  # raises SettingsError on a bad value
    assert settings.production
    assert settings.api_tokens and settings.signing_key and settings.redis_url


def test_environment_references_exist() -> None:
    """Given the Deployments, every ConfigMap, Secret and key they name is defined."""
    config_maps = {doc["metadata"]["name"] for doc in objects("ConfigMap")}
    secrets = {doc["metadata"]["name"]: doc["stringData"] for doc in objects("Secret")}
    for component in ("api", "worker"):
        for source in container(component).get("envFrom", []):
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] in config_maps
            else:
                assert source["secretRef"]["name"] in secrets
        for variable in container(component).get("env", []):
            assert variable["name"] in setting_names()
            reference = variable["valueFrom"]["secretKeyRef"]
            assert reference["key"] in secrets[reference["name"]]
    worker_gets = {variable["name"] for variable in container("worker")["env"]}
    assert "REDIS_URL" in worker_gets


def test_service_reaches_the_api_pods_only() -> None:
    """Deployments select their own pods; the Service the API's, on the port granian binds."""
    service = one("Service", "preview-api")
    for deployment in deployments().values():
        labels = deployment["spec"]["template"]["metadata"]["labels"].items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels
    api = deployments()["api"]
    selector = service["spec"]["selector"].items()
    assert selector <= api["spec"]["template"]["metadata"]["labels"].items()
    assert not selector <= deployments()["worker"]["spec"]["template"]["metadata"]["labels"].items()
    ports = {port["name"]: port["containerPort"] for port in container("api")["ports"]}
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in ports
    command = container("api")["command"]
    bind = command[command.index("--bind") + 1]
    assert int(bind.rpartition(":")[2]) == ports[service_port["targetPort"]]


@pytest.mark.parametrize("component", ["api", "worker"])
def test_containers_run_real_cli_commands(component: str) -> None:
    """Each container runs the installed console script with options its command takes."""
    program, name, *arguments = container(component)["command"]
    assert entry_points(group="console_scripts", name=program), f"no console script {program}"
    command = cli.commands[name]
    command.make_context(name, list(arguments))  # raises on an unknown or bad option
    probe = container(component)["readinessProbe"].get("exec")
    if probe:
        program, name, *arguments = probe["command"]
        assert entry_points(group="console_scripts", name=program)
        assert name == "health"
        cli.commands[name].make_context(name, list(arguments))


def test_api_probes_answer_without_a_token_and_without_workers(make_app: AppMaker) -> None:
    """Given the pods' settings and no live worker, each API probe path answers 200."""
    environment = service_environment()
    del environment["REDIS_URL"], environment["DATA_DIR"]  # the test's Redis and folder
    # The test Redis keeps nothing on disk, which production would refuse.
    app = make_app(**environment, PREVIEW_ALLOW_VOLATILE_REDIS="true")
    client = app.test_client()
    ports = {port["name"] for port in container("api")["ports"]}
    probes = [container("api")[name] for name in ("readinessProbe", "livenessProbe")]
    for probe in probes:
        assert probe["httpGet"]["port"] in ports
        answer = client.get(probe["httpGet"]["path"])  # as the kubelet asks: no token
        assert answer.status_code == 200, probe["httpGet"]["path"]
    # Why neither probe is the health endpoint: without workers it answers 503.
    assert client.get("/api/preview/worker/health").status_code == 503


def test_scaled_object_scales_the_workers_with_redis_credentials() -> None:
    """The ScaledObject targets the worker Deployment, authenticated from a Secret's keys."""
    scaled = one("ScaledObject", "preview-worker")
    target = scaled["spec"]["scaleTargetRef"]
    assert target["name"] == deployments()["worker"]["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert "replicas" not in deployments()["worker"]["spec"], "kubectl apply would fight KEDA"
    authentications = {doc["metadata"]["name"]: doc for doc in objects("TriggerAuthentication")}
    secrets = {doc["metadata"]["name"]: doc["stringData"] for doc in objects("Secret")}
    for trigger in scaled["spec"]["triggers"]:
        authentication = authentications[trigger["authenticationRef"]["name"]]
        references = authentication["spec"]["secretTargetRef"]
        assert {reference["parameter"] for reference in references} <= REDIS_AUTH_PARAMETERS
        assert "address" in {reference["parameter"] for reference in references}
        for reference in references:
            assert reference["key"] in secrets[reference["name"]]


def test_triggers_watch_every_queue_and_add_them_up() -> None:
    """One trigger per priority on its RQ list, summed by the formula, at least one pod."""
    scaled = one("ScaledObject", "preview-worker")["spec"]
    settings = manifest_settings()
    lists = {trigger["name"]: trigger["metadata"]["listName"] for trigger in scaled["triggers"]}
    assert lists == {priority: keys.queue_key(queueing.queue_name(settings, priority))
                     for priority in queueing.PRIORITIES}
    formula = scaled["advanced"]["scalingModifiers"]["formula"]
    assert re.fullmatch(r"\s*\w+(\s*\+\s*\w+)*\s*", formula), "a sum of the queues"
    assert sorted(re.findall(r"\w+", formula)) == sorted(lists)
    # The pools run the retry scheduler and recovery: scaling to zero would stop both.
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]


def test_keda_reads_the_redis_of_redis_url() -> None:
    """KEDA's address, password, database and TLS are those of REDIS_URL."""
    url = urlsplit(service_environment()["REDIS_URL"])
    keda_secret = one("Secret", "preview-worker-keda-redis")["stringData"]
    assert keda_secret["address"] == f"{url.hostname}:{url.port or 6379}"
    assert keda_secret["password"] == url.password
    database = url.path.strip("/") or "0"
    for trigger in one("ScaledObject", "preview-worker")["spec"]["triggers"]:
        assert trigger["metadata"].get("databaseIndex", "0") == database
        tls = trigger["metadata"].get("enableTLS", "false") == "true"
        assert tls == (url.scheme == "rediss")


@pytest.mark.parametrize("component", ["api", "worker"])
def test_pods_are_restricted(component: str) -> None:
    """Non-root with the image's user, no privileges, a read-only root and a scratch /tmp."""
    spec = pod_spec(component)
    security = spec["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    image_user = re.search(r"^USER (\d+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert image_user and security["runAsUser"] == int(image_user.group(1))
    own = container(component)["securityContext"]
    assert own["allowPrivilegeEscalation"] is False
    assert own["readOnlyRootFilesystem"] is True
    assert own["capabilities"]["drop"] == ["ALL"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container(component)["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # Stray FOO_SERVICE_HOST variables stay out of an environment read for settings.
    assert spec["enableServiceLinks"] is False
    assert container(component)["image"] == container("api")["image"]


def test_artifacts_are_one_shared_volume() -> None:
    """DATA_DIR is the same ReadWriteMany claim in every pod; only the workers write."""
    data_dir = str(manifest_settings().data_dir)
    claims = {doc["metadata"]["name"]: doc for doc in objects("PersistentVolumeClaim")}
    for component in ("api", "worker"):
        volumes = {volume["name"]: volume for volume in pod_spec(component)["volumes"]}
        mounts = {mount["mountPath"]: mount for mount in container(component)["volumeMounts"]}
        claim = volumes[mounts[data_dir]["name"]]["persistentVolumeClaim"]["claimName"]
        assert "ReadWriteMany" in claims[claim]["spec"]["accessModes"]
        assert mounts[data_dir].get("readOnly", False) is (component == "api")


def test_workers_drain_and_fit_their_concurrency() -> None:
    """A stopping pod outlives its longest job; CPU and memory follow the concurrency."""
    settings = manifest_settings()
    grace = pod_spec("worker")["terminationGracePeriodSeconds"]
    assert grace >= settings.job_timeout + 30
    resources = container("worker")["resources"]
    assert quantity(resources["requests"]["cpu"]) == settings.worker_concurrency
    needed = POOL_MIB + settings.worker_concurrency * WORKER_MIB + PROBE_MIB
    assert quantity(resources["requests"]["memory"]) >= needed
    assert quantity(resources["limits"]["memory"]) >= quantity(resources["requests"]["memory"])
