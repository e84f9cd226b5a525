"""Validate tagstream's Kubernetes manifests without a cluster.

    python deploy/validate.py                            # every kustomization, pinned versions
    python deploy/validate.py deploy/k8s/overlays/gpu -k 1.33
    make deploy-check                                    # the same, plus hadolint on the Dockerfile

For each kustomization: render it with the pinned kustomize, then
  1. validate every core object with kubernetes-validate (offline schemas, strict: unknown
     fields fail) at each pinned Kubernetes version;
  2. validate every KEDA and Prometheus Operator object (ScaledObject, TriggerAuthentication,
     PodMonitor, PrometheusRule) against the JSON schemas vendored in
     deploy/schemas/ (converted from their CRDs, see deploy/schemas/README.md); an object of
     any other kind is a problem too, so nothing is applied unchecked;
  3. check the policies a platform team asks for: pod security (non-root, read-only root
     filesystem, no privilege escalation, capabilities dropped, seccomp), probes on the metrics
     port, a grace period above the worker's drain deadline, maxReplicaCount within the input
     topic's partitions, the ScaledObject's trigger agreeing with the worker's settings, GPU
     requests agreeing with TAGSTREAM_DEVICE, the bundle volume read-only, NetworkPolicies that
     admit the brokers, DNS and the scraper and nothing else, known setting names only, and
     credentials from Secrets only.
Prints every problem as ``<target> <Kind>/<name>: <what is wrong>`` and exits 1 if any.
Needs PyYAML, jsonschema and kubernetes-validate (the project's dev dependencies).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

DEPLOY_DIR = Path(__file__).resolve().parent
REPO_ROOT = DEPLOY_DIR.parent
SCHEMA_DIR = DEPLOY_DIR / "schemas"
DEFAULT_TARGETS = ("k8s/overlays/cpu", "k8s/overlays/gpu", "k8s/training", "k8s/promote")

# The kustomize that renders the manifests; the Makefile builds exactly this version.
KUSTOMIZE_VERSION = "v5.8.1"
KUSTOMIZE_DEFAULT = Path.home() / ".cache/tagstream/tools" / f"kustomize-{KUSTOMIZE_VERSION}" / "kustomize"
# Oldest Kubernetes the manifests support (podFailurePolicy, unhealthyPodEvictionPolicy and
# matchLabelKeys are GA or on by default from 1.31) and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.31", "1.37")

# Seconds the kubelet must leave after the drain deadline for the final commit and exit.
GRACE_MARGIN_S = 5
DEFAULT_DRAIN_TIMEOUT_S = 20
DEFAULT_METRICS_PORT = 9100
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
GPU_RESOURCE = "nvidia.com/gpu"
PARTITIONS_ANNOTATION = "tagstream.io/input-partitions"

# Every worker setting's environment variable (CONTRACTS.md section 4 plus what worker/settings.py
# added; deploy/README.md lists them with their meaning; tests/unit/deploy compares all three).
# A name outside this set is a typo: the worker would refuse to start, but only at rollout time.
SETTINGS_ENV = frozenset(
    {
        "TAGSTREAM_CONFIG_FILE",
        "TAGSTREAM_BOOTSTRAP_SERVERS",
        "TAGSTREAM_SECURITY_PROTOCOL",
        "TAGSTREAM_SASL_MECHANISM",
        "TAGSTREAM_SASL_USERNAME",
        "TAGSTREAM_SASL_PASSWORD",
        "TAGSTREAM_SSL_CAFILE",
        "TAGSTREAM_SSL_CERTFILE",
        "TAGSTREAM_SSL_KEYFILE",
        "TAGSTREAM_INPUT_TOPICS",
        "TAGSTREAM_INPUT_PATTERN",
        "TAGSTREAM_GROUP_ID",
        "TAGSTREAM_OUTPUT_TOPIC",
        "TAGSTREAM_ROUTES",
        "TAGSTREAM_DLQ_TOPIC",
        "TAGSTREAM_AUTO_OFFSET_RESET",
        "TAGSTREAM_ISOLATION_LEVEL",
        "TAGSTREAM_INPUT_FORMAT",
        "TAGSTREAM_TEXT_FIELD",
        "TAGSTREAM_ID_FIELD",
        "TAGSTREAM_MAX_PAYLOAD_BYTES",
        "TAGSTREAM_MAX_BATCH_SIZE",
        "TAGSTREAM_MAX_BATCH_TOKENS",
        "TAGSTREAM_MAX_WAIT_MS",
        "TAGSTREAM_MAX_PENDING_EVENTS",
        "TAGSTREAM_BUNDLE_PATH",
        "TAGSTREAM_RELOAD_INTERVAL_S",
        "TAGSTREAM_DEVICE",
        "TAGSTREAM_DTYPE",
        "TAGSTREAM_CUDA_GRAPHS",
        "TAGSTREAM_THREADS",
        "TAGSTREAM_INFERENCE_STREAMS",
        "TAGSTREAM_TOP_K",
        "TAGSTREAM_FAST_TOKENIZER",
        "TAGSTREAM_PROCESSES",
        "TAGSTREAM_CPU_PINNING",
        "TAGSTREAM_METRICS_PORT",
        "TAGSTREAM_DRAIN_TIMEOUT_S",
        "TAGSTREAM_COMMIT_INTERVAL_MS",
        "TAGSTREAM_KAFKA_CLIENT",
        "TAGSTREAM_GROUP_INSTANCE_ID",
        "TAGSTREAM_LEAVE_GROUP_ON_STOP",
        "TAGSTREAM_SESSION_TIMEOUT_MS",
        "TAGSTREAM_HEARTBEAT_INTERVAL_MS",
        "TAGSTREAM_MAX_POLL_INTERVAL_MS",
        "TAGSTREAM_METADATA_REFRESH_S",
        "TAGSTREAM_OUTPUT_TOPIC_IDLE_S",
        "TAGSTREAM_PROCESSING_GUARANTEE",
        "TAGSTREAM_TRANSACTION_TIMEOUT_MS",
        "TAGSTREAM_DEAD_LETTER_MAX_BYTES",
        "TAGSTREAM_BROKER_OUTAGE_S",
        "TAGSTREAM_MODEL_STALL_S",
        "TAGSTREAM_STATE_DIR",
        "TAGSTREAM_STAGE_TIMING",
        "TAGSTREAM_LOG_LEVEL",
        "TAGSTREAM_LOG_FORMAT",
    }
)
DEFAULT_STATE_DIR = "/tmp/tagstream"  # worker/settings.py's state_dir
# The Kafka client libraries TAGSTREAM_KAFKA_CLIENT may name (worker/settings.py); the image has both.
KAFKA_CLIENTS = ("kafka-python", "confluent")
# Settings that must come from a Secret, never from a ConfigMap or a literal value.
SECRET_SETTINGS = frozenset({"TAGSTREAM_SASL_PASSWORD"})
FROM_SECRET = "<from Secret>"

# KEDA's Kafka scaler spells the SASL mechanism its own way.
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}


class DeployCheckError(Exception):
    """The check itself could not run (kustomize missing or failing, unreadable schema)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one rendered object."""

    obj: str  # "Kind/name"
    message: str

    def __str__(self) -> str:
        return f"{self.obj}: {self.message}"


def ref(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind', '?')}/{obj.get('metadata', {}).get('name', '?')}"


# --- rendering ---------------------------------------------------------------------------------


def find_kustomize(explicit: str | Path | None = None) -> Path:
    """The kustomize binary: ``explicit``, else $KUSTOMIZE, else the one `make deploy-tools` builds."""
    candidate = Path(explicit or os.environ.get("KUSTOMIZE") or KUSTOMIZE_DEFAULT)
    if not (candidate.is_file() and os.access(candidate, os.X_OK)):
        raise DeployCheckError(
            f"kustomize {KUSTOMIZE_VERSION} not found at {candidate}: run `make deploy-tools` "
            "(builds it with Go into ~/.cache/tagstream/tools), or set KUSTOMIZE=/path/to/kustomize"
        )
    return candidate


def kustomize_version(kustomize: Path) -> str:
    out = subprocess.run([str(kustomize), "version"], capture_output=True, text=True, check=False)
    match = re.search(r"v\d+\.\d+\.\d+", out.stdout + out.stderr)
    return match.group(0) if match else "unknown"


def render(target: str | Path, kustomize: Path) -> list[dict[str, Any]]:
    """The objects `kustomize build target` produces, in order."""
    proc = subprocess.run(
        [str(kustomize), "build", str(target)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise DeployCheckError(f"kustomize build {target} failed:\n{proc.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


# --- schemas -----------------------------------------------------------------------------------


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """Vendored CRD schemas keyed by (apiVersion, kind)."""
    schemas = {}
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DeployCheckError(f"{path} is not valid JSON: {exc}") from exc
        props = schema["properties"]
        schemas[(props["apiVersion"]["const"], props["kind"]["const"])] = schema
    return schemas


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(top level)"


def validate_schemas(objects: Iterable[dict[str, Any]], versions: Iterable[str]) -> list[Problem]:
    """Core objects against Kubernetes' schemas (each version), custom ones against their CRD's."""
    import kubernetes_validate  # imported here: only this check needs it

    problems = []
    versions = tuple(versions)
    for obj in objects:
        key = (obj.get("apiVersion", ""), obj.get("kind", ""))
        if key in crd_schemas():
            validator = jsonschema.Draft7Validator(crd_schemas()[key])
            for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
                problems.append(Problem(ref(obj), f"{_path(error)}: {error.message} ({key[0]} CRD schema)"))
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(
                    Problem(
                        ref(obj),
                        f"no schema for {key[1]} {key[0]}: neither a Kubernetes {version} kind nor "
                        f"a vendored CRD in {SCHEMA_DIR.relative_to(REPO_ROOT)}/ (add its schema there)",
                    )
                )
                break
            except kubernetes_validate.ValidationError as error:
                problems.append(
                    Problem(ref(obj), f"{_path(error)}: {error.message} (Kubernetes {version} schema)")
                )
    return problems


# --- helpers over rendered objects -------------------------------------------------------------


def by_kind(objects: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def named(objects: Iterable[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    return next((o for o in by_kind(objects, kind) if o["metadata"]["name"] == name), None)


def pod_template(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload.get("spec", {})
    if workload["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    return spec.get("template", {})


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return pod_template(workload).get("metadata", {}).get("labels", {}) or {}


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels and matchExpressions) matches ``labels``."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and labels.get(key) in values)
            or (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def container_settings(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The TAGSTREAM_* environment a container gets: ConfigMaps from envFrom, then env."""
    settings: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            cm = named(objects, "ConfigMap", source["configMapRef"]["name"])
            settings.update((cm or {}).get("data") or {})
        elif "secretRef" in source:
            settings["<secretRef>"] = source["secretRef"]["name"]
    for var in container.get("env") or []:
        if "value" in var:
            settings[var["name"]] = str(var["value"])
        elif "secretKeyRef" in (var.get("valueFrom") or {}):
            settings[var["name"]] = FROM_SECRET
        else:
            settings[var["name"]] = "<from fieldRef>"
    return settings


def feeders_per_pod(settings: dict[str, str], container: dict[str, Any]) -> int:
    """Consumer-group members one pod runs: TAGSTREAM_PROCESSES, with ``auto`` resolved as the worker
    does (worker/procs/plan.py): min(CPU limit - 1, 8) with a GPU, else 1."""
    value = str(settings.get("TAGSTREAM_PROCESSES", "1")).strip().lower()
    if value != "auto":
        return max(1, as_int(value, 1))
    limits = (container.get("resources") or {}).get("limits") or {}
    if as_int(limits.get(GPU_RESOURCE), 0) < 1 or settings.get("TAGSTREAM_DEVICE") == "cpu":
        return 1
    cpus = cpu_cores(limits.get("cpu"))
    return 8 if cpus is None else max(1, min(math.ceil(cpus) - 1, 8))


def cpu_cores(quantity: str | int | float | None) -> float | None:
    if quantity is None:
        return None
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def broker_ports(bootstrap_servers: str) -> set[int]:
    ports = set()
    for server in bootstrap_servers.split(","):
        _, _, port = server.strip().rpartition(":")
        if port.isdigit():
            ports.add(int(port))
    return ports


def as_int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def as_float(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


# --- policies ----------------------------------------------------------------------------------


def check_pod_security(workload: dict[str, Any]) -> Iterator[Problem]:
    """The restricted Pod Security Standard, plus a read-only root filesystem."""
    name = ref(workload)
    pod = pod_template(workload).get("spec", {})
    pod_sc = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            yield Problem(name, f"spec.{field} is true: workers need no host namespaces")
    for volume in pod.get("volumes") or []:
        if "hostPath" in volume:
            yield Problem(name, f"volume {volume['name']} is a hostPath: use a PVC or emptyDir")
    if pod_sc.get("runAsUser") == 0:
        yield Problem(name, "securityContext.runAsUser is 0 (root): use the image's uid 10001")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    for container in (pod.get("initContainers") or []) + (pod.get("containers") or []):
        where = f"container {container['name']}"
        sc = container.get("securityContext") or {}
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            yield Problem(name, f"{where}: runAsNonRoot is not true (pod or container securityContext)")
        if sc.get("runAsUser") == 0:
            yield Problem(name, f"{where}: securityContext.runAsUser is 0 (root)")
        if sc.get("allowPrivilegeEscalation") is not False:
            yield Problem(name, f"{where}: securityContext.allowPrivilegeEscalation must be false")
        if sc.get("privileged"):
            yield Problem(name, f"{where}: securityContext.privileged must not be true")
        if sc.get("readOnlyRootFilesystem") is not True:
            yield Problem(name, f"{where}: securityContext.readOnlyRootFilesystem must be true")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            yield Problem(name, f"{where}: securityContext.capabilities.drop must include ALL")
        if caps.get("add"):
            yield Problem(name, f"{where}: securityContext.capabilities.add {caps['add']} is not allowed")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            yield Problem(name, f"{where}: seccompProfile.type must be RuntimeDefault or Localhost")
        image = container.get("image", "")
        if "@sha256:" not in image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
            yield Problem(name, f"{where}: image {image!r} has no version tag (set one in the overlay's images:)")
        limits = (container.get("resources") or {}).get("limits") or {}
        if "memory" not in limits:
            yield Problem(name, f"{where}: resources.limits.memory is not set")
        mounts = {m["mountPath"] for m in container.get("volumeMounts") or []}
        if sc.get("readOnlyRootFilesystem") and "/tmp" not in mounts:
            yield Problem(name, f"{where}: the root filesystem is read-only but /tmp has no volume (emptyDir)")


def check_gpu(objects: list[dict[str, Any]], workload: dict[str, Any]) -> Iterator[Problem]:
    """GPU limits, node placement and TAGSTREAM_DEVICE agree."""
    name = ref(workload)
    pod = pod_template(workload).get("spec", {})
    for container in pod.get("containers") or []:
        limits = (container.get("resources") or {}).get("limits") or {}
        gpus = as_int(limits.get(GPU_RESOURCE), 0)
        device = container_settings(objects, container).get("TAGSTREAM_DEVICE", "auto")
        where = f"container {container['name']}"
        if device.startswith("cuda") and gpus < 1:
            yield Problem(name, f"{where}: TAGSTREAM_DEVICE={device} but no {GPU_RESOURCE} limit")
        if device == "cpu" and gpus:
            yield Problem(name, f"{where}: requests {gpus} {GPU_RESOURCE} but TAGSTREAM_DEVICE=cpu")
        if gpus:
            if not (pod.get("nodeSelector") or pod.get("affinity")):
                yield Problem(name, f"{where}: uses a GPU but the pod has no nodeSelector or affinity for GPU nodes")
            if not any(t.get("key") == GPU_RESOURCE for t in pod.get("tolerations") or []):
                yield Problem(name, f"{where}: uses a GPU but tolerates no {GPU_RESOURCE} taint")


def check_worker(objects: list[dict[str, Any]], deployment: dict[str, Any]) -> Iterator[Problem]:
    """Probes, drain deadline, threads, bundle volume and settings of a worker Deployment."""
    name = ref(deployment)
    pod = pod_template(deployment).get("spec", {})
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    for container in pod.get("containers") or []:
        where = f"container {container['name']}"
        settings = container_settings(objects, container)
        metrics_port = as_int(settings.get("TAGSTREAM_METRICS_PORT"), DEFAULT_METRICS_PORT)
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = (container.get(probe) or {}).get("httpGet")
            if not get:
                yield Problem(name, f"{where}: {probe} must be an httpGet on {path}")
                continue
            if get.get("path") != path:
                yield Problem(name, f"{where}: {probe} path is {get.get('path')!r}, expected {path!r}")
            port = ports.get(get.get("port"), get.get("port"))
            if port != metrics_port:
                yield Problem(name, f"{where}: {probe} probes port {port}, the worker serves {path} on TAGSTREAM_METRICS_PORT={metrics_port}")
        drain = as_float(settings.get("TAGSTREAM_DRAIN_TIMEOUT_S"), DEFAULT_DRAIN_TIMEOUT_S)
        grace = as_int(pod.get("terminationGracePeriodSeconds"), 30)
        if grace < drain + GRACE_MARGIN_S:
            yield Problem(
                name,
                f"terminationGracePeriodSeconds {grace} must exceed TAGSTREAM_DRAIN_TIMEOUT_S {drain:g} "
                f"by at least {GRACE_MARGIN_S} s, or the kubelet kills the worker mid-drain",
            )
        for key, value in settings.items():
            if key.startswith("TAGSTREAM_") and key not in SETTINGS_ENV:
                yield Problem(name, f"{where}: {key} is not a tagstream setting (typo? see deploy/README.md)")
            if key in SECRET_SETTINGS and value != FROM_SECRET:
                yield Problem(name, f"{where}: {key} must come from a Secret (secretKeyRef), not a ConfigMap or value")
        client = settings.get("TAGSTREAM_KAFKA_CLIENT", KAFKA_CLIENTS[0])
        if client not in KAFKA_CLIENTS:
            yield Problem(name, f"{where}: TAGSTREAM_KAFKA_CLIENT={client!r}: use {' or '.join(KAFKA_CLIENTS)}")
        processes = str(settings.get("TAGSTREAM_PROCESSES", "1")).strip().lower()
        if processes != "auto" and not (processes.isdigit() and 1 <= int(processes) <= 64):
            yield Problem(name, f"{where}: TAGSTREAM_PROCESSES={processes!r}: use auto or a whole number from 1 to 64")
        threads = as_int(settings.get("TAGSTREAM_THREADS"), 0)
        cpu_limit = cpu_cores(((container.get("resources") or {}).get("limits") or {}).get("cpu"))
        # 0 is derived from the pod's cgroup CPU limit at start (model/cpus.py): ceil(limit).
        if cpu_limit is not None and threads not in (0, math.ceil(cpu_limit)):
            yield Problem(
                name,
                f"{where}: TAGSTREAM_THREADS={threads} but the CPU limit is {cpu_limit:g}: set it to "
                f"{math.ceil(cpu_limit)} or 0 (0 derives it from the limit); more threads than the limit "
                "feeds stall on the CFS quota",
            )
        bundle_path = settings.get("TAGSTREAM_BUNDLE_PATH", "")
        mount = next(
            (m for m in container.get("volumeMounts") or [] if bundle_path.startswith(m["mountPath"].rstrip("/") + "/")),
            None,
        )
        if mount is None:
            yield Problem(name, f"{where}: TAGSTREAM_BUNDLE_PATH={bundle_path!r} is on no mounted volume")
        else:
            claim = volumes.get(mount["name"], {}).get("persistentVolumeClaim")
            if not mount.get("readOnly") or (claim is not None and not claim.get("readOnly")):
                yield Problem(name, f"{where}: the bundle volume {mount['name']} must be mounted read-only (mount and claim)")
        # The model-call journal (worker/call_journal.py) must outlive the container: on the read-only
        # root filesystem it is off, and a worker that dies in a model call counts nothing.
        state_dir = str(settings.get("TAGSTREAM_STATE_DIR", DEFAULT_STATE_DIR)).strip()
        if state_dir and not any(
            (state_dir.rstrip("/") + "/").startswith(m["mountPath"].rstrip("/") + "/") and not m.get("readOnly")
            for m in container.get("volumeMounts") or []
        ):
            yield Problem(
                name,
                f"{where}: TAGSTREAM_STATE_DIR={state_dir!r} is on no writable mounted volume: mount an emptyDir"
                " there (it outlives container restarts), or the worker cannot count the inputs of a model call"
                " it dies in",
            )


def check_scaledobject(objects: list[dict[str, Any]], so: dict[str, Any]) -> Iterator[Problem]:
    """Replica bounds within the partitions; the trigger agrees with the worker's settings."""
    name = ref(so)
    spec = so.get("spec", {})
    partitions = as_int((so["metadata"].get("annotations") or {}).get(PARTITIONS_ANNOTATION), 0)
    max_replicas = as_int(spec.get("maxReplicaCount"), 100)  # KEDA's default
    min_replicas = as_int(spec.get("minReplicaCount"), 0)
    if partitions < 1:
        yield Problem(name, f"annotation {PARTITIONS_ANNOTATION} must give the input topic's partition count")
    elif max_replicas > partitions:
        yield Problem(
            name,
            f"maxReplicaCount {max_replicas} exceeds the input topic's {partitions} partitions "
            f"({PARTITIONS_ANNOTATION}): replicas beyond that would sit idle in the consumer group",
        )
    if min_replicas > max_replicas:
        yield Problem(name, f"minReplicaCount {min_replicas} exceeds maxReplicaCount {max_replicas}")
    behavior = ((spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}).get("behavior") or {}
    if "stabilizationWindowSeconds" not in (behavior.get("scaleDown") or {}):
        yield Problem(name, "advanced.horizontalPodAutoscalerConfig.behavior.scaleDown.stabilizationWindowSeconds is not set: every scale-down rebalances the group")
    target = spec.get("scaleTargetRef", {})
    deployment = named(objects, target.get("kind", "Deployment"), target.get("name", ""))
    if deployment is None:
        yield Problem(name, f"scaleTargetRef {target.get('name')!r} is not a Deployment in this kustomization")
        return
    containers = pod_template(deployment).get("spec", {}).get("containers") or [{}]
    settings = container_settings(objects, containers[0])
    feeders = feeders_per_pod(settings, containers[0])
    if partitions >= 1 and feeders > 1 and max_replicas * feeders > partitions:
        yield Problem(
            name,
            f"maxReplicaCount {max_replicas} x {feeders} feeder processes per pod (TAGSTREAM_PROCESSES="
            f"{settings.get('TAGSTREAM_PROCESSES')}) = {max_replicas * feeders} consumers exceed the input topic's"
            f" {partitions} partitions: lower maxReplicaCount to {max(1, partitions // feeders)} or the feeders",
        )
    triggers = [t for t in spec.get("triggers") or [] if t.get("type") == "kafka"]
    if not triggers:
        yield Problem(name, "no kafka trigger: the worker scales on consumer lag")
    for trigger in triggers:
        meta = trigger.get("metadata") or {}
        if as_int(meta.get("lagThreshold"), 0) < 1:
            yield Problem(name, "kafka trigger: lagThreshold (target lag per replica) must be a positive integer")
        if meta.get("allowIdleConsumers", "false") not in ("false", False):
            yield Problem(name, "kafka trigger: allowIdleConsumers must stay false (no more consumers than partitions)")
        topics = [t.strip() for t in settings.get("TAGSTREAM_INPUT_TOPICS", "").split(",") if t.strip()]
        expected = {
            "bootstrapServers": settings.get("TAGSTREAM_BOOTSTRAP_SERVERS"),
            "consumerGroup": settings.get("TAGSTREAM_GROUP_ID", "tagstream"),
            # Where a group without offsets starts decides what KEDA counts as its lag.
            "offsetResetPolicy": settings.get("TAGSTREAM_AUTO_OFFSET_RESET", "earliest"),
        }
        if len(topics) == 1:
            expected["topic"] = topics[0]
        for key, want in expected.items():
            if meta.get(key) != want:
                yield Problem(name, f"kafka trigger: {key}={meta.get(key)!r} but the worker's setting is {want!r}")
        mechanism = settings.get("TAGSTREAM_SASL_MECHANISM")
        if mechanism in KEDA_SASL and meta.get("sasl") != KEDA_SASL[mechanism]:
            yield Problem(name, f"kafka trigger: sasl={meta.get('sasl')!r} but the worker uses {mechanism} ({KEDA_SASL[mechanism]})")
        wants_tls = settings.get("TAGSTREAM_SECURITY_PROTOCOL", "PLAINTEXT") in ("SSL", "SASL_SSL")
        if wants_tls != (meta.get("tls") == "enable"):
            yield Problem(name, f"kafka trigger: tls={meta.get('tls')!r} disagrees with TAGSTREAM_SECURITY_PROTOCOL")
        auth = (trigger.get("authenticationRef") or {}).get("name")
        if mechanism and not (auth and named(objects, "TriggerAuthentication", auth)):
            yield Problem(name, f"kafka trigger: authenticationRef {auth!r} is not a TriggerAuthentication here")


def _port_numbers(rule_ports: list[dict[str, Any]] | None, named_ports: dict[str, int]) -> set[int]:
    return {named_ports.get(p.get("port"), p.get("port")) for p in rule_ports or []}


def check_network(objects: list[dict[str, Any]], workload: dict[str, Any]) -> Iterator[Problem]:
    """A NetworkPolicy isolates the pods both ways; the worker may reach brokers and DNS only."""
    name = ref(workload)
    labels = pod_labels(workload)
    policies = [p for p in by_kind(objects, "NetworkPolicy") if selects(p["spec"].get("podSelector"), labels)]
    types = {t for p in policies for t in p["spec"].get("policyTypes") or []}
    if not {"Ingress", "Egress"} <= types:
        yield Problem(name, f"no NetworkPolicy restricts both ingress and egress of its pods (found {sorted(types)})")
        return
    containers = pod_template(workload).get("spec", {}).get("containers") or []
    named_ports = {p["name"]: p["containerPort"] for c in containers for p in c.get("ports") or [] if "name" in p}
    allowed_egress: set[int] = set()
    for policy in policies:
        for rule in policy["spec"].get("egress") or []:
            if not rule.get("to"):
                yield Problem(ref(policy), "an egress rule without `to` admits every destination")
            if not rule.get("ports"):
                yield Problem(ref(policy), "an egress rule without `ports` admits every port")
            allowed_egress |= _port_numbers(rule.get("ports"), named_ports)
        for rule in policy["spec"].get("ingress") or []:
            if not rule.get("from"):
                yield Problem(ref(policy), "an ingress rule without `from` admits every source")
            metrics = {named_ports["metrics"]} if "metrics" in named_ports else set()
            if not rule.get("ports") or not _port_numbers(rule.get("ports"), named_ports) <= metrics:
                yield Problem(ref(policy), "ingress must be limited to the pods' metrics port")
    for container in containers:
        servers = container_settings(objects, container).get("TAGSTREAM_BOOTSTRAP_SERVERS")
        if servers:
            if 53 not in allowed_egress:
                yield Problem(name, "NetworkPolicy egress does not admit DNS (port 53): broker names will not resolve")
            missing = broker_ports(servers) - allowed_egress
            if missing:
                yield Problem(name, f"NetworkPolicy egress does not admit the broker port(s) {sorted(missing)} of TAGSTREAM_BOOTSTRAP_SERVERS")


def check_selected_by(objects: list[dict[str, Any]], deployment: dict[str, Any]) -> Iterator[Problem]:
    """A PodDisruptionBudget and a PodMonitor select the worker's pods."""
    name = ref(deployment)
    labels = pod_labels(deployment)
    if not any(selects(p["spec"].get("selector"), labels) for p in by_kind(objects, "PodDisruptionBudget")):
        yield Problem(name, "no PodDisruptionBudget selects its pods: a node drain may stop every worker at once")
    ports = {p.get("name") for c in pod_template(deployment)["spec"]["containers"] for p in c.get("ports") or []}
    monitors = [m for m in by_kind(objects, "PodMonitor") if selects(m["spec"].get("selector"), labels)]
    if not monitors:
        yield Problem(name, "no PodMonitor selects its pods: its metrics would not be scraped")
    for monitor in monitors:
        for endpoint in monitor["spec"].get("podMetricsEndpoints") or []:
            if endpoint.get("port") not in ports:
                yield Problem(ref(monitor), f"scrapes port {endpoint.get('port')!r}, which the pods do not name")


def check_policies(objects: list[dict[str, Any]]) -> list[Problem]:
    """Every policy above, over one rendered kustomization."""
    problems: list[Problem] = []
    for workload in (o for o in objects if o.get("kind") in WORKLOAD_KINDS):
        problems += check_pod_security(workload)
        problems += check_gpu(objects, workload)
        problems += check_network(objects, workload)
    for deployment in by_kind(objects, "Deployment"):
        problems += check_worker(objects, deployment)
        problems += check_selected_by(objects, deployment)
    for so in by_kind(objects, "ScaledObject"):
        problems += check_scaledobject(objects, so)
    for cm in by_kind(objects, "ConfigMap"):
        for key in cm.get("data") or {}:
            if key in SECRET_SETTINGS:
                problems.append(Problem(ref(cm), f"{key} is a credential: put it in a Secret"))
    return problems


def check_objects(objects: list[dict[str, Any]], versions: Iterable[str] = KUBERNETES_VERSIONS) -> list[Problem]:
    """Schema validation, then policies, over already rendered objects."""
    return validate_schemas(objects, versions) + check_policies(objects)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Render tagstream's kustomizations and validate them offline (schemas and policies).",
    )
    parser.add_argument(
        "targets", nargs="*", type=Path,
        help=f"kustomization folders (default: {', '.join('deploy/' + t for t in DEFAULT_TARGETS)})",
    )
    parser.add_argument(
        "-k", "--kubernetes-version", action="append", dest="versions",
        help=f"Kubernetes version to validate against; repeatable (default: {' and '.join(KUBERNETES_VERSIONS)})",
    )
    parser.add_argument("--kustomize", help=f"kustomize binary (default: $KUSTOMIZE or {KUSTOMIZE_DEFAULT})")
    args = parser.parse_args(argv)
    targets = args.targets or [DEPLOY_DIR / t for t in DEFAULT_TARGETS]
    versions = args.versions or list(KUBERNETES_VERSIONS)
    try:
        kustomize = find_kustomize(args.kustomize)
        found = kustomize_version(kustomize)
        if found != KUSTOMIZE_VERSION:
            print(f"warning: kustomize {found} at {kustomize}; the pinned version is {KUSTOMIZE_VERSION}", file=sys.stderr)
        failed = 0
        for target in targets:
            objects = render(target, kustomize)
            problems = check_objects(objects, versions)
            for problem in problems:
                print(f"{target} {problem}")
            status = f"{len(problems)} problem(s)" if problems else "ok"
            print(f"{target}: {len(objects)} objects, Kubernetes {', '.join(versions)}: {status}", file=sys.stderr)
            failed += bool(problems)
    except DeployCheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
