"""The kustomizations render, pass Kubernetes and CRD schemas, and meet the platform policies."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
DEPLOY_DIR = REPO_ROOT / "deploy"
Objects = list[dict[str, Any]]
GPU = "k8s/overlays/gpu"
CPU = "k8s/overlays/cpu"
TRAINING = "k8s/training"
PROMOTE = "k8s/promote"
TARGETS = (CPU, GPU, TRAINING, PROMOTE)  # as in conftest.py


def find(objects: Objects, kind: str, name_prefix: str = "") -> dict[str, Any]:
    """The one object of ``kind`` whose name starts with ``name_prefix``."""
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name_prefix)]
    assert len(matches) == 1, f"expected one {kind} {name_prefix!r}, found {len(matches)}"
    return matches[0]


def worker_container(objects: Objects) -> dict[str, Any]:
    return find(objects, "Deployment", "tagstream-worker")["spec"]["template"]["spec"]["containers"][0]


def worker_config(objects: Objects) -> dict[str, str]:
    return find(objects, "ConfigMap", "tagstream-worker-")["data"]


def messages(problems: list[Any]) -> str:
    return "\n".join(str(p) for p in problems)


def test_kustomize_is_the_pinned_version(validator: ModuleType, kustomize: Path) -> None:
    """The kustomize the tests use is the version the Makefile pins, and validate.py agrees with it."""
    assert validator.kustomize_version(kustomize) == validator.KUSTOMIZE_VERSION
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert f"KUSTOMIZE_VERSION := {validator.KUSTOMIZE_VERSION}" in makefile


@pytest.mark.parametrize(
    ("target", "kinds"),
    [
        (
            CPU,
            {"Namespace", "ServiceAccount", "ConfigMap", "Service", "PersistentVolumeClaim", "Deployment",
             "PodDisruptionBudget", "ScaledObject", "TriggerAuthentication", "PodMonitor", "PrometheusRule",
             "NetworkPolicy"},
        ),
        (
            GPU,
            {"Namespace", "ServiceAccount", "ConfigMap", "Service", "PersistentVolumeClaim", "Deployment",
             "PodDisruptionBudget", "ScaledObject", "TriggerAuthentication", "PodMonitor", "PrometheusRule",
             "NetworkPolicy"},
        ),
        (TRAINING, {"PersistentVolumeClaim", "Job", "NetworkPolicy"}),
        (PROMOTE, {"ConfigMap", "Job", "NetworkPolicy"}),
    ],
)
def test_kustomization_renders_the_expected_kinds(rendered: Callable[[str], Objects], target: str, kinds: set[str]) -> None:
    """Each kustomization renders exactly the object kinds its README promises, all in namespace tagstream."""
    objects = rendered(target)
    assert {o["kind"] for o in objects} == kinds
    assert all(o["metadata"].get("namespace") == "tagstream" for o in objects if o["kind"] != "Namespace")


@pytest.mark.parametrize("target", TARGETS)
def test_objects_pass_kubernetes_and_crd_schemas(validator: ModuleType, rendered: Callable[[str], Objects], target: str) -> None:
    """Core objects pass kubernetes-validate (strict) at each pinned version; KEDA and PodMonitor objects pass their CRD schemas."""
    problems = validator.validate_schemas(rendered(target), validator.KUBERNETES_VERSIONS)
    assert not problems, messages(problems)


@pytest.mark.parametrize("target", TARGETS)
def test_platform_policies_hold(validator: ModuleType, rendered: Callable[[str], Objects], target: str) -> None:
    """Security, probes, drain, scaling, network and settings policies hold for every kustomization."""
    problems = validator.check_policies(rendered(target))
    assert not problems, messages(problems)


def test_custom_resources_are_checked_against_vendored_crds(validator: ModuleType) -> None:
    """The vendored schemas cover exactly the custom kinds the manifests use."""
    assert set(validator.crd_schemas()) == {
        ("keda.sh/v1alpha1", "ScaledObject"),
        ("keda.sh/v1alpha1", "TriggerAuthentication"),
        ("monitoring.coreos.com/v1", "PodMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
    }


@pytest.mark.parametrize("target", [CPU, GPU])
def test_worker_is_hardened(rendered: Callable[[str], Objects], target: str) -> None:
    """The worker runs as uid 10001 with a read-only root, no privilege escalation, no capabilities and no API token."""
    pod = find(rendered(target), "Deployment", "tagstream-worker")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


@pytest.mark.parametrize("target", [CPU, GPU])
def test_grace_period_exceeds_drain_deadline(rendered: Callable[[str], Objects], target: str) -> None:
    """terminationGracePeriodSeconds is above TAGSTREAM_DRAIN_TIMEOUT_S, so SIGKILL never cuts a drain short."""
    objects = rendered(target)
    grace = find(objects, "Deployment", "tagstream-worker")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(worker_config(objects)["TAGSTREAM_DRAIN_TIMEOUT_S"])


@pytest.mark.parametrize("target", [CPU, GPU])
def test_probes_hit_health_endpoints_on_metrics_port(rendered: Callable[[str], Objects], target: str) -> None:
    """Liveness probes /healthz and readiness /readyz on the port the worker serves metrics on."""
    objects = rendered(target)
    container = worker_container(objects)
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
    assert port == int(worker_config(objects)["TAGSTREAM_METRICS_PORT"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


@pytest.mark.parametrize("target", [CPU, GPU])
def test_max_replicas_within_partitions(validator: ModuleType, rendered: Callable[[str], Objects], target: str) -> None:
    """KEDA never scales beyond the input topic's partition count, and scales down behind a stabilization window."""
    so = find(rendered(target), "ScaledObject")
    partitions = int(so["metadata"]["annotations"][validator.PARTITIONS_ANNOTATION])
    assert so["spec"]["minReplicaCount"] >= 1
    assert so["spec"]["maxReplicaCount"] <= partitions
    behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 60
    trigger = so["spec"]["triggers"][0]
    assert trigger["type"] == "kafka" and int(trigger["metadata"]["lagThreshold"]) > 0


def test_gpu_overlay_takes_one_gpu_on_gpu_nodes(rendered: Callable[[str], Objects]) -> None:
    """The GPU worker limits nvidia.com/gpu to 1, selects GPU nodes, tolerates their taint and runs on cuda."""
    objects = rendered(GPU)
    pod = find(objects, "Deployment", "tagstream-worker")["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert worker_config(objects)["TAGSTREAM_DEVICE"] == "cuda"
    assert pod["containers"][0]["image"].endswith(":0.1.0-gpu")


def test_gpu_pods_run_feeder_processes_and_never_more_consumers_than_partitions(rendered: Callable[[str], Objects]) -> None:
    """The GPU overlay runs 4 feeders around one model process, with CPUs for each, on the Kafka client
    that costs the least CPU an event (confluent), and caps replicas so that pods x feeders stays within
    the input partitions; the CPU overlay keeps one process and the default client."""
    objects = rendered(GPU)
    assert worker_config(objects)["TAGSTREAM_KAFKA_CLIENT"] == "confluent"
    assert "TAGSTREAM_KAFKA_CLIENT" not in worker_config(rendered(CPU))
    so = find(objects, "ScaledObject")
    feeders = int(worker_config(objects)["TAGSTREAM_PROCESSES"])
    partitions = int(so["metadata"]["annotations"]["tagstream.io/input-partitions"])
    cpu = int(find(objects, "Deployment", "tagstream-worker")["spec"]["template"]["spec"]["containers"][0]
              ["resources"]["limits"]["cpu"])
    assert feeders == 4 and cpu >= feeders + 1
    assert so["spec"]["maxReplicaCount"] * feeders <= partitions
    assert worker_config(rendered(CPU)).get("TAGSTREAM_PROCESSES", "1") == "1"


def test_compose_gpu_override_feeds_the_gpu_as_the_gpu_overlay_does(rendered: Callable[[str], Objects]) -> None:
    """deploy/docker-compose.gpu.yml runs feeder processes (no more than the input topic's partitions,
    which Compose's init service creates) on the GPU overlay's Kafka client, batch limits and dtype."""
    env = yaml.safe_load((DEPLOY_DIR / "docker-compose.gpu.yml").read_text())["services"]["worker"]["environment"]
    compose = yaml.safe_load((DEPLOY_DIR / "docker-compose.yml").read_text())
    init = next(str(s.get("command")) for s in compose["services"].values() if "--partitions" in str(s.get("command")))
    partitions = int(re.search(r"--partitions (\d+)", init).group(1))
    assert 2 <= int(env["TAGSTREAM_PROCESSES"]) <= partitions
    overlay = worker_config(rendered(GPU))
    for name in ("TAGSTREAM_KAFKA_CLIENT", "TAGSTREAM_MAX_BATCH_SIZE", "TAGSTREAM_MAX_BATCH_TOKENS", "TAGSTREAM_DTYPE"):
        assert str(env[name]) == overlay[name], name


def test_cpu_replicas_scale_at_a_lower_lag_than_gpu_replicas(rendered: Callable[[str], Objects]) -> None:
    """A CPU replica clears fewer texts a second, so the CPU overlay adds replicas at a smaller backlog."""
    def threshold(target: str) -> int:
        return int(find(rendered(target), "ScaledObject")["spec"]["triggers"][0]["metadata"]["lagThreshold"])

    assert threshold(CPU) < threshold(GPU)


def test_cpu_overlay_takes_no_gpu(rendered: Callable[[str], Objects]) -> None:
    """The CPU worker asks for no GPU, runs on cpu, and uses as many threads as its CPU limit."""
    objects = rendered(CPU)
    pod = find(objects, "Deployment", "tagstream-worker")["spec"]["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits and "tolerations" not in pod
    config = worker_config(objects)
    assert config["TAGSTREAM_DEVICE"] == "cpu"
    assert int(config["TAGSTREAM_THREADS"]) == int(limits["cpu"])


@pytest.mark.parametrize("target", [CPU, GPU])
def test_bundle_volume_is_read_only_and_credentials_come_from_secrets(rendered: Callable[[str], Objects], target: str) -> None:
    """The bundle PVC is mounted read-only; the SASL password and TLS files come from Secrets, not the ConfigMap."""
    objects = rendered(target)
    pod = find(objects, "Deployment", "tagstream-worker")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert volumes["bundles"]["persistentVolumeClaim"] == {"claimName": "tagstream-bundles", "readOnly": True}
    assert mounts["bundles"]["readOnly"] is True
    assert worker_config(objects)["TAGSTREAM_BUNDLE_PATH"].startswith(mounts["bundles"]["mountPath"] + "/")
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["TAGSTREAM_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "tagstream-kafka", "key": "password"}
    assert "TAGSTREAM_SASL_PASSWORD" not in worker_config(objects)
    assert volumes["kafka-tls"]["secret"]["secretName"] == "tagstream-kafka-tls"
    assert worker_config(objects)["TAGSTREAM_SSL_CAFILE"].startswith(mounts["kafka-tls"]["mountPath"] + "/")


def test_training_job_exports_to_the_bundles_volume_on_a_gpu(rendered: Callable[[str], Objects]) -> None:
    """The training Job runs tagstream-train train on a GPU and writes under the workers' bundles PVC."""
    job = find(rendered(TRAINING), "Job")
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["tagstream-train"] and container["args"][0] == "train"
    out = container["args"][container["args"].index("--out") + 1]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert out.startswith("/bundles/releases/")
    assert volumes[mounts["/bundles"]["name"]]["persistentVolumeClaim"]["claimName"] == "tagstream-bundles"
    assert not mounts["/bundles"].get("readOnly")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["restartPolicy"] == "Never"


# --- a broken manifest fails, with a message that says what to fix ------------------------------


def _set(path: str, value: Any) -> Callable[[Objects], None]:
    """A mutation that sets ``Kind[/name-prefix]:dotted.path`` (list indices as numbers) to ``value``."""
    selector, _, dotted = path.partition(":")
    kind, _, prefix = selector.partition("/")

    def mutate(objects: Objects) -> None:
        node: Any = find(objects, kind, prefix)
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
        if value is _DELETE:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return mutate


_DELETE = object()
_POD = "Deployment/tagstream-worker:spec.template.spec"
_CONTAINER = _POD + ".containers.0"


def _add_object(obj: dict[str, Any]) -> Callable[[Objects], None]:
    return lambda objects: objects.append(obj)


def _config(key: str, value: str) -> Callable[[Objects], None]:
    return lambda objects: worker_config(objects).__setitem__(key, value)


BROKEN = {
    "maxReplicaCount above partitions": (
        _set("ScaledObject:spec.maxReplicaCount", 24),
        "maxReplicaCount 24 exceeds the input topic's 12 partitions",
    ),
    "grace period below drain deadline": (
        _set(_POD + ".terminationGracePeriodSeconds", 20),
        "terminationGracePeriodSeconds 20 must exceed TAGSTREAM_DRAIN_TIMEOUT_S 20",
    ),
    "writable root filesystem": (
        _set(_CONTAINER + ".securityContext.readOnlyRootFilesystem", False),
        "container worker: securityContext.readOnlyRootFilesystem must be true",
    ),
    "privilege escalation allowed": (
        _set(_CONTAINER + ".securityContext.allowPrivilegeEscalation", _DELETE),
        "container worker: securityContext.allowPrivilegeEscalation must be false",
    ),
    "runs as root": (
        _set(_POD + ".securityContext.runAsUser", 0),
        "securityContext.runAsUser is 0 (root)",
    ),
    "no readiness probe": (
        _set(_CONTAINER + ".readinessProbe", _DELETE),
        "container worker: readinessProbe must be an httpGet on /readyz",
    ),
    "liveness on the wrong path": (
        _set(_CONTAINER + ".livenessProbe.httpGet.path", "/metrics"),
        "livenessProbe path is '/metrics', expected '/healthz'",
    ),
    "misspelt container field": (
        _set(_CONTAINER + ".securityContext.readOnlyRootFileSystem", True),
        "'readOnlyRootFileSystem' was unexpected",
    ),
    "ScaledObject field of the wrong type": (
        _set("ScaledObject:spec.minReplicaCount", "1"),
        "spec.minReplicaCount: '1' is not of type 'integer' (keda.sh/v1alpha1 CRD schema)",
    ),
    "misspelt PodMonitor field": (
        _set("PodMonitor:spec.podMetricsEndpoints.0.intervall", "15s"),
        "'intervall' was unexpected",
    ),
    "trigger watches another topic": (
        _set("ScaledObject:spec.triggers.0.metadata.topic", "other"),
        "kafka trigger: topic='other' but the worker's setting is 'events'",
    ),
    "password in the ConfigMap": (
        _config("TAGSTREAM_SASL_PASSWORD", "hunter2"),
        "TAGSTREAM_SASL_PASSWORD is a credential: put it in a Secret",
    ),
    "password as a literal env value": (
        _set(_CONTAINER + ".env.1", {"name": "TAGSTREAM_SASL_PASSWORD", "value": "hunter2"}),
        "container worker: TAGSTREAM_SASL_PASSWORD must come from a Secret (secretKeyRef)",
    ),
    "misspelt setting": (
        _config("TAGSTREAM_MAX_BATCH", "64"),
        "TAGSTREAM_MAX_BATCH is not a tagstream setting",
    ),
    "unknown Kafka client": (
        _config("TAGSTREAM_KAFKA_CLIENT", "librdkafka"),
        "TAGSTREAM_KAFKA_CLIENT='librdkafka': use kafka-python or confluent",
    ),
    "threads above the CPU limit": (
        _config("TAGSTREAM_THREADS", "16"),
        "TAGSTREAM_THREADS=16 but the CPU limit is 6",
    ),
    "more feeders than partitions": (
        _set("ScaledObject:spec.maxReplicaCount", 4),
        "maxReplicaCount 4 x 4 feeder processes per pod (TAGSTREAM_PROCESSES=4) = 16 consumers exceed the input"
        " topic's 12 partitions: lower maxReplicaCount to 3 or the feeders",
    ),
    "state folder on the read-only root filesystem": (
        _config("TAGSTREAM_STATE_DIR", "/var/lib/tagstream"),
        "container worker: TAGSTREAM_STATE_DIR='/var/lib/tagstream' is on no writable mounted volume: mount an"
        " emptyDir there (it outlives container restarts), or the worker cannot count the inputs of a model call"
        " it dies in",
    ),
    "feeder count not a number": (
        _config("TAGSTREAM_PROCESSES", "many"),
        "container worker: TAGSTREAM_PROCESSES='many': use auto or a whole number from 1 to 64",
    ),
    "GPU pod without toleration": (
        _set(_POD + ".tolerations", _DELETE),
        "uses a GPU but tolerates no nvidia.com/gpu taint",
    ),
    "egress to any port": (
        _set("NetworkPolicy:spec.egress.0.ports", _DELETE),
        "an egress rule without `ports` admits every port",
    ),
    "kind without a schema": (
        _add_object({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
                     "metadata": {"name": "x", "namespace": "tagstream"}, "spec": {}}),
        "no schema for ServiceMonitor monitoring.coreos.com/v1",
    ),
    "image without a tag": (
        _set(_CONTAINER + ".image", "registry.example.com/tagstream"),
        "image 'registry.example.com/tagstream' has no version tag",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_manifest_fails_with_a_clear_message(validator: ModuleType, rendered: Callable[[str], Objects], case: str) -> None:
    """A mutated copy of the GPU overlay fails validation, and the problem says what is wrong where."""
    mutate, expected = BROKEN[case]
    objects = rendered(GPU)
    mutate(objects)
    problems = messages(validator.check_objects(objects, versions=("1.37",)))
    assert expected in problems, f"expected {expected!r} among:\n{problems}"


def test_validator_cli_rejects_a_broken_copy_of_the_tree(validator: ModuleType, kustomize: Path, tmp_path: Path) -> None:
    """`deploy/validate.py` on an edited copy of deploy/k8s exits 1 and names the object and the fix."""
    tree = tmp_path / "k8s"
    shutil.copytree(DEPLOY_DIR / "k8s", tree)
    shutil.copytree(DEPLOY_DIR / "grafana", tmp_path / "grafana")  # the overlays' dashboard component
    deployment = tree / "base" / "deployment.yaml"
    text = deployment.read_text()
    assert "terminationGracePeriodSeconds: 45" in text
    deployment.write_text(text.replace("terminationGracePeriodSeconds: 45", "terminationGracePeriodSeconds: 15"))
    proc = subprocess.run(
        [sys.executable, str(DEPLOY_DIR / "validate.py"), str(tree / "overlays" / "gpu"), "--kustomize", str(kustomize), "-k", "1.37"],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(
        r"overlays/gpu Deployment/tagstream-worker: terminationGracePeriodSeconds 15 must exceed "
        r"TAGSTREAM_DRAIN_TIMEOUT_S 20 by at least 5 s",
        proc.stdout,
    ), proc.stdout
    assert "1 problem(s)" in proc.stderr


def test_validator_cli_passes_the_shipped_tree(kustomize: Path) -> None:
    """`deploy/validate.py` with no arguments checks every kustomization and exits 0."""
    proc = subprocess.run(
        [sys.executable, str(DEPLOY_DIR / "validate.py"), "--kustomize", str(kustomize)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.count(": ok") == len(TARGETS)


def test_validator_names_the_install_command_when_kustomize_is_missing(tmp_path: Path) -> None:
    """Without kustomize the validator exits 2 and says to run `make deploy-tools`."""
    proc = subprocess.run(
        [sys.executable, str(DEPLOY_DIR / "validate.py"), "--kustomize", str(tmp_path / "nothing")],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 2
    assert "run `make deploy-tools`" in proc.stderr


def test_readme_external_broker_patch_renders_and_validates(validator: ModuleType, kustomize: Path, tmp_path: Path) -> None:
    """The README's NetworkPolicy patch for brokers outside the cluster, in an overlay, renders to an ipBlock rule that passes every check."""
    readme = (DEPLOY_DIR / "README.md").read_text()
    snippet = readme.split("# in overlays/<yours>/kustomization.yaml\n", 1)[1].split("```", 1)[0]
    tree = tmp_path / "k8s"
    shutil.copytree(DEPLOY_DIR / "k8s", tree)
    shutil.copytree(DEPLOY_DIR / "grafana", tmp_path / "grafana")  # the overlays' dashboard component
    overlay = tree / "overlays" / "external"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../gpu\n"
        + "\n".join(line[2:] for line in snippet.splitlines())
    )
    objects = validator.render(overlay, kustomize)
    egress = find(objects, "NetworkPolicy", "tagstream-worker")["spec"]["egress"][0]
    assert egress["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    assert egress["ports"] == [{"port": 9093, "protocol": "TCP"}]
    problems = validator.check_objects(objects, versions=("1.37",))
    assert not problems, messages(problems)
