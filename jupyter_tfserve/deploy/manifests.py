"""Manifest builders, one per target; each returns ``(files, notes)``: documents by file name, what did not carry.

The models are TF Serving's own ``ModelServerConfig``, so the Kubernetes target hands
stock TF Serving the same ``models.config`` the notebook wrote, with each base path
rewritten to object storage. KServe serves one model per InferenceService from a
``storageUri``; a traffic split between two versions becomes its canary rollout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import text_format

from ..engine.config import ModelServerConfig
from ..engine.source import describe_policy

TF_SERVING_IMAGE = "tensorflow/serving:2.18.0"
ENGINE_IMAGE = "jupyter-tfserve:0.1.0"
RUNTIME_NAME = "jupyter-tfserve"
# The exact flags KServe's TF Serving runtime passes (../shared/k8s/kserve-tensorflow-serving-runtime.yaml).
KSERVE_FLAGS = ["--model_name={{.Name}}", "--port=9000", "--rest_api_port=8080", "--model_base_path=/mnt/models",
                "--rest_api_timeout_in_ms=60000"]
MONITORING_CONFIG = 'prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n'


@dataclass
class Plan:
    """What to deploy: the config (base paths already in object storage), splits, and the app's name."""

    config: ModelServerConfig
    name: str = "tfserve"
    splits: dict[str, dict[int, int]] = field(default_factory=dict)  # model -> version -> percent
    image: str = ""


def k8s_name(name: str) -> str:
    """A DNS-1123 label from a model name (lower case, '-' for anything else)."""
    cleaned = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:63].strip("-")
    if not cleaned:
        raise ValueError(f"model name {name!r} has no letters or digits to name a Kubernetes object after")
    return cleaned


def _common_notes(plan: Plan) -> list[str]:
    return ["share tokens are not carried over: the cluster's own ingress and auth guard the endpoints"]


def kubernetes(plan: Plan) -> tuple[dict[str, dict], list[str]]:
    """A ConfigMap with models.config, a Deployment of stock TF Serving reading it, a Service, an HPA."""
    name = k8s_name(plan.name)
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "jupyter-tfserve"}
    notes = _common_notes(plan)
    models = list(plan.config.model_config_list.config)
    for model, split in plan.splits.items():
        notes.append(f"model {model}: the split {_split_text(split)} is not carried over: TF Serving has no traffic "
                     "splits (clients choose a version or label); use --target=kserve for a canary")
    if any(model.base_path.startswith("s3://") for model in models):
        notes.append("stock TF Serving >= 2.7 cannot read s3:// (\"File system scheme 's3' not implemented\"); "
                     f"use gs://, or --image={ENGINE_IMAGE} (this engine reads s3:// with the same flags)")
    image = plan.image or TF_SERVING_IMAGE
    config_text = text_format.MessageToString(plan.config)
    probe_model = models[0].name if models else "default"
    files = {
        "configmap.yaml": {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{name}-config", "labels": labels},
            "data": {"models.config": config_text, "monitoring.config": MONITORING_CONFIG},
        },
        "deployment.yaml": {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels, "annotations": {
                        "prometheus.io/scrape": "true", "prometheus.io/port": "8501",
                        "prometheus.io/path": "/monitoring/prometheus/metrics"}},
                    "spec": {
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
                        "containers": [{
                            "name": "tfserving", "image": image,
                            "args": ["--port=8500", "--rest_api_port=8501",
                                     "--model_config_file=/config/models.config",
                                     "--monitoring_config_file=/config/monitoring.config",
                                     "--file_system_poll_wait_seconds=30"],
                            "ports": [{"name": "grpc", "containerPort": 8500},
                                      {"name": "http", "containerPort": 8501}],
                            "readinessProbe": {"httpGet": {"path": f"/v1/models/{probe_model}", "port": 8501},
                                               "initialDelaySeconds": 5, "periodSeconds": 10},
                            "resources": {"requests": {"cpu": "1", "memory": "2Gi"},
                                          "limits": {"cpu": "2", "memory": "4Gi"}},
                            "volumeMounts": [{"name": "config", "mountPath": "/config", "readOnly": True}],
                            "securityContext": {"allowPrivilegeEscalation": False,
                                                "capabilities": {"drop": ["ALL"]}},
                        }],
                        "volumes": [{"name": "config", "configMap": {"name": f"{name}-config"}}],
                    },
                },
            },
        },
        "service.yaml": {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "labels": labels},
            "spec": {"selector": labels, "ports": [
                {"name": "grpc", "port": 8500, "targetPort": 8500},
                {"name": "http", "port": 8501, "targetPort": 8501}]},
        },
        "hpa.yaml": {
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": 1, "maxReplicas": 4,
                "metrics": [{"type": "Resource", "resource": {
                    "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}],
            },
        },
    }
    notes.append("versions, version policies and labels carry over unchanged in models.config")
    notes.append("batching is not carried over: pass --enable_batching --batching_parameters_file in the "
                 "Deployment's args if the notebook tuned it")
    return files, notes


def _split_text(split: dict[int, int]) -> str:
    return ", ".join(f"version {version}: {percent}%" for version, percent in sorted(split.items()))


def _isvc(model, storage_uri: str, runtime: str | None, canary: int | None) -> dict:
    predictor: dict = {"model": {"modelFormat": {"name": "tensorflow"}, "storageUri": storage_uri}}
    if runtime:
        predictor["model"]["runtime"] = runtime
    if canary is not None:
        predictor["canaryTrafficPercent"] = canary
    return {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": k8s_name(model.name), "annotations": {
            "serving.kserve.io/enable-prometheus-scraping": "true"}},
        "spec": {"predictor": predictor},
    }


def kserve(plan: Plan, runtime: str | None = None) -> tuple[dict[str, dict], list[str]]:
    """One InferenceService per model; a split between two versions becomes a canary rollout (two files)."""
    files: dict[str, dict] = {}
    notes = _common_notes(plan)
    for model in plan.config.model_config_list.config:
        name = k8s_name(model.name)
        base = model.base_path.rstrip("/")
        if model.version_labels:
            notes.append(f"model {model.name}: labels {dict(model.version_labels)} are not carried over "
                         "(one InferenceService serves one model; name versions by revision)")
        policy = describe_policy(model)
        if policy != "latest 1" and model.name not in plan.splits:
            notes.append(f"model {model.name}: version policy '{policy}' is not carried over: KServe's runtime "
                         "serves the latest version under storageUri")
        split = plan.splits.get(model.name)
        if split:
            if len(split) != 2:
                notes.append(f"model {model.name}: the split {_split_text(split)} has {len(split)} arms; KServe's "
                             "canary has two, so it is not carried over")
                files[f"{name}.yaml"] = _isvc(model, base, runtime, None)
                continue
            stable, canary = sorted(split)
            files[f"{name}.yaml"] = _isvc(model, f"{base}-v{stable}", runtime, None)
            files[f"{name}-canary.yaml"] = _isvc(model, f"{base}-v{canary}", runtime, split[canary])
            notes.append(f"model {model.name}: the split {_split_text(split)} becomes a canary rollout: apply "
                         f"{name}.yaml, wait for it to be Ready, then {name}-canary.yaml "
                         f"(canaryTrafficPercent {split[canary]}); --upload writes version N to {base}-vN")
        else:
            files[f"{name}.yaml"] = _isvc(model, base, runtime, None)
    notes.append("batching is not carried over: KServe's TF Serving runtime takes no batching flags")
    return files, notes


def kserve_runtime(plan: Plan) -> tuple[dict[str, dict], list[str]]:
    """A ServingRuntime running this engine's image with KServe's flags, and InferenceServices that pick it."""
    image = plan.image or ENGINE_IMAGE
    runtime = {
        "apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime",
        "metadata": {"name": RUNTIME_NAME},
        "spec": {
            "annotations": {"prometheus.kserve.io/port": "8080",
                            "prometheus.kserve.io/path": "/monitoring/prometheus/metrics"},
            "supportedModelFormats": [{"name": "tensorflow", "version": "2", "autoSelect": False}],
            "protocolVersions": ["v1", "grpc-v1", "v2"],
            "containers": [{
                "name": "kserve-container", "image": image,
                "command": ["jupyter-tfserve", "serve"], "args": list(KSERVE_FLAGS),
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "allowPrivilegeEscalation": False,
                                    "privileged": False, "capabilities": {"drop": ["ALL"]}},
                "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
            }],
        },
    }
    files, notes = kserve(plan, runtime=RUNTIME_NAME)
    files = {"servingruntime.yaml": runtime, **files}
    notes.append(f"the runtime runs {image}: build it from deploy/Dockerfile and push it where the cluster pulls")
    return files, notes


BUILDERS = {"kubernetes": kubernetes, "kserve": kserve, "kserve-runtime": kserve_runtime}
