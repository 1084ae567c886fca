"""The KubeRay `RayService` manifest, generated from the same Serve config the service validates.

KubeRay stores `serveConfigV2` as an opaque string and does not validate it: a typo there surfaces
only when the application fails to deploy inside the cluster. So the manifest is rendered from a
Serve config file that `service.app.read_serve_config` has validated with `AppConfig` first, and a
test re-validates what the committed manifest carries.

Layout: a CPU-only head (`num-cpus: "0"`: no replica is scheduled beside the GCS and controller)
and one GPU worker group (`nvidia.com/gpu` limits); replicas take fractions of a GPU as the Serve
config says. Checkpoints come from a read-only volume at /models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pruning.core.options import Flag

SERVE_PORT = 8000


class ClusterSpec(BaseModel):
    """The cluster around the Serve application (every field is a flag of `blockserve kuberay`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        "blockserve", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63, description="RayService name"
    )
    image: str = Field("ghcr.io/blockserve/blockserve:latest", min_length=1, description="container image")
    models_claim: str = Field(
        "blockserve-models", min_length=1, description="PersistentVolumeClaim with the checkpoints (/models)"
    )
    gpu_workers_min: Annotated[int, Flag("--min-workers")] = Field(
        1, ge=0, le=1000, description="GPU worker pods at least"
    )
    gpu_workers_max: Annotated[int, Flag("--max-workers")] = Field(
        4, ge=1, le=1000, description="GPU worker pods at most"
    )
    gpus_per_worker: int = Field(1, ge=1, le=16)
    worker_cpus: int = Field(8, ge=1, le=1024)
    worker_memory: str = Field("32Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$")
    head_cpus: int = Field(2, ge=1, le=1024)
    head_memory: str = Field("8Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$")

    @model_validator(mode="after")
    def _range(self) -> ClusterSpec:
        if self.gpu_workers_max < self.gpu_workers_min:
            raise ValueError(
                f"`gpu_workers_max` ({self.gpu_workers_max}) is below `gpu_workers_min` ({self.gpu_workers_min})"
            )
        return self


DEFAULT_CLUSTER = ClusterSpec()


def serve_config_v2(path: str | Path) -> str:
    """The Serve config file as KubeRay's `serveConfigV2` string, after validating it."""
    return _serve_config_v2(_read(path)[0])


def _read(path: str | Path):
    # Imported here: service.app imports Ray Serve, and every `blockserve` command imports this module
    # for `ClusterSpec` (its flags); only rendering a manifest needs the config reader.
    from service.app import read_serve_config

    return read_serve_config(path)


def _serve_config_v2(document: dict[str, Any]) -> str:
    kept = {key: document[key] for key in ("proxy_location", "http_options", "applications") if key in document}
    return yaml.safe_dump(kept, sort_keys=False)


def _container(cluster: ClusterSpec, name: str, cpus: int, memory: str, gpus: int = 0) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": str(cpus), "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    return {
        "name": name,
        "image": cluster.image,
        "resources": {"limits": limits, "requests": {"cpu": str(cpus), "memory": memory}},
        "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
    }


def _volumes(cluster: ClusterSpec) -> list[dict[str, Any]]:
    return [{"name": "models", "persistentVolumeClaim": {"claimName": cluster.models_claim, "readOnly": True}}]


def render_rayservice(serve_config: str | Path, cluster: ClusterSpec = DEFAULT_CLUSTER) -> dict[str, Any]:
    document, config = _read(serve_config)
    # e.g. http_front: haproxy, read by every Ray process
    environment = [{"name": name, "value": value} for name, value in config.ray_environment().items()]
    head = _container(cluster, "ray-head", cluster.head_cpus, cluster.head_memory)
    head["ports"] = [
        {"containerPort": 6379, "name": "gcs-server"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
        {"containerPort": SERVE_PORT, "name": "serve"},
    ]
    worker = _container(cluster, "ray-worker", cluster.worker_cpus, cluster.worker_memory, cluster.gpus_per_worker)
    worker["ports"] = [{"containerPort": SERVE_PORT, "name": "serve"}]
    for container in (head, worker) if environment else ():
        container["env"] = [dict(variable) for variable in environment]  # own copies: no YAML anchors
    # Ready once this node's Serve proxy answers; Serve's own health route, not the app's.
    worker["readinessProbe"] = {
        "httpGet": {"path": "/-/healthz", "port": SERVE_PORT},
        "initialDelaySeconds": 10,
        "periodSeconds": 5,
        "failureThreshold": 12,
    }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": cluster.name, "labels": {"app.kubernetes.io/name": "blockserve"}},
        "spec": {
            # An image or cluster change starts a new cluster and moves traffic once it is ready;
            # a serveConfigV2-only change is applied to the running cluster.
            "upgradeStrategy": {"type": "NewCluster"},
            "serveConfigV2": _serve_config_v2(document),
            "rayClusterConfig": {
                "enableInTreeAutoscaling": True,
                "headGroupSpec": {
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": {"spec": {"containers": [head], "volumes": _volumes(cluster)}},
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "gpu",
                        "replicas": cluster.gpu_workers_min,
                        "minReplicas": cluster.gpu_workers_min,
                        "maxReplicas": cluster.gpu_workers_max,
                        "rayStartParams": {},
                        "template": {
                            "spec": {
                                "containers": [worker],
                                "volumes": _volumes(cluster),
                                "tolerations": [
                                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                                ],
                            }
                        },
                    }
                ],
            },
        },
    }


class _BlockStrings(yaml.SafeDumper):
    """Multi-line strings as `|` blocks, so serveConfigV2 reads as the YAML it is."""


_BlockStrings.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None),
)


def write_rayservice(serve_config: str | Path, out: str | Path, cluster: ClusterSpec = DEFAULT_CLUSTER) -> Path:
    header = (
        "# Generated by `blockserve kuberay " + str(serve_config) + "` from the validated Serve config;\n"
        "# edit that file (or the ClusterSpec options) and regenerate rather than editing serveConfigV2 here.\n"
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    manifest = render_rayservice(serve_config, cluster)
    out.write_text(header + yaml.dump(manifest, Dumper=_BlockStrings, sort_keys=False))
    return out
