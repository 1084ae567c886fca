"""The KubeRay manifest, the GPU Serve config it embeds, autoscaling options and the Dockerfile."""

import os
import re

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from blockserve.cli import main
from service.app import ConfigError, read_serve_config
from service.config import AppConfig, VariantConfig
from service.kuberay import ClusterSpec, render_rayservice
from tests.factories import ROOT, SHARED

SERVE_GPU = ROOT / "deploy" / "serve-gpu.yaml"
MANIFEST = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
CRD = SHARED / "schemas" / "ray.io_rayservices.yaml"


def _crd_schema(version: str = "v1") -> dict:
    crd = yaml.safe_load(CRD.read_text())
    return next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]


def test_committed_manifest_is_what_the_generator_renders_from_serve_gpu_yaml():
    assert yaml.safe_load(MANIFEST.read_text()) == render_rayservice(SERVE_GPU)


@pytest.mark.skipif(not CRD.is_file(), reason="the RayService CRD lives in ../shared/schemas")
def test_manifest_validates_against_the_rayservice_crd_schema():
    manifest = yaml.safe_load(MANIFEST.read_text())
    jsonschema.validate(manifest, _crd_schema())
    broken = yaml.safe_load(MANIFEST.read_text())
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _crd_schema())


def test_serve_config_v2_validates_against_the_service_config():
    manifest = yaml.safe_load(MANIFEST.read_text())
    serve = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    assert app["import_path"] == "service.app:build_app" and serve["http_options"]["port"] == 8000
    config = AppConfig.model_validate(app["args"])
    variants = [v for task in config.tasks().values() for v in task.variants.values()]
    assert all(v.device == "cuda" and 0 < v.num_gpus < 1 for v in variants)  # fractional GPUs
    assert all(v.autoscaling is not None and v.autoscaling.max_replicas > 1 for v in variants)
    assert config.qa.variants["pruned"].runtime == "onnx"


def test_cluster_layout_cpu_head_gpu_workers():
    spec = yaml.safe_load(MANIFEST.read_text())["spec"]
    assert spec["upgradeStrategy"]["type"] == "NewCluster"
    cluster = spec["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    (group,) = cluster["workerGroupSpecs"]
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["readinessProbe"]["httpGet"] == {"path": "/-/healthz", "port": 8000}
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    mounts = {m["mountPath"] for m in worker["volumeMounts"]}
    assert "/models" in mounts


def test_generator_refuses_an_invalid_serve_config(tmp_path, capsys):
    bad = yaml.safe_load(SERVE_GPU.read_text())
    bad["applications"][0]["args"]["qa"]["variants"]["dense"]["num_gpu"] = 0.5  # typo of num_gpus
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="num_gpu"):
        render_rayservice(path)
    assert main(["kuberay", str(path), "--out", str(tmp_path / "out.yaml")]) == 2
    assert "num_gpu" in capsys.readouterr().err and not (tmp_path / "out.yaml").exists()


def test_cli_writes_a_manifest_with_the_asked_cluster(tmp_path):
    out = tmp_path / "rs.yaml"
    argv = ["kuberay", str(SERVE_GPU), "--out", str(out), "--name", "qa", "--image", "reg/x:1", "--max-workers", "8"]
    assert main(argv) == 0
    manifest = yaml.safe_load(out.read_text())
    assert manifest == render_rayservice(SERVE_GPU, ClusterSpec(name="qa", image="reg/x:1", gpu_workers_max=8))
    assert main([*argv[:-2], "--min-workers", "9"]) == 2


def test_autoscaling_or_fixed_replicas():
    fixed = VariantConfig(checkpoint="m")
    assert fixed.scaling_options() == {"num_replicas": 1}
    scaled = VariantConfig(checkpoint="m", autoscaling={"min_replicas": 0, "max_replicas": 3})
    assert scaled.scaling_options()["autoscaling_config"]["max_replicas"] == 3
    with pytest.raises(ValidationError, match="either replicas"):
        VariantConfig(checkpoint="m", replicas=2, autoscaling={})
    with pytest.raises(ValidationError, match="below min_replicas"):
        VariantConfig(checkpoint="m", autoscaling={"min_replicas": 3, "max_replicas": 2})
    # The local config still validates and scales by a fixed count.
    _, config = read_serve_config(ROOT / "deploy" / "serve.yaml")
    assert config.qa.variants["dense"].scaling_options() == {"num_replicas": 1}


# ---- Dockerfile ------------------------------------------------------------------------------------
def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_dockerfile_is_pinned_cuda_non_root_with_healthcheck():
    instructions = _instructions()
    (base,) = [arg for op, arg in instructions if op == "FROM"]
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-[\w.-]*runtime[\w.-]*", base), base
    runs = " ".join(arg for op, arg in instructions if op == "RUN")
    assert "torch==2.13.0" in runs and "download.pytorch.org/whl/cu" in runs  # CUDA build, pinned
    assert "'.[gpu]'" in runs  # the extra that brings onnxruntime-gpu
    copies = [arg for op, arg in instructions if op == "COPY"]
    assert any(arg.startswith("deploy ") for arg in copies)
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in (name.rstrip("*") for name in packages):  # every installed package is in the image
        assert any(arg.startswith(f"{package} ") for arg in copies), package
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(op == "HEALTHCHECK" for op, _ in instructions)
    assert ("EXPOSE", "8000") in instructions


def test_gpu_extra_brings_onnxruntime_gpu():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    gpu = project["optional-dependencies"]["gpu"]
    assert any(dep.startswith("onnxruntime-gpu") for dep in gpu)
    assert not any(dep.startswith("onnxruntime-gpu") for dep in project["dependencies"])


def test_haproxy_front_reaches_every_ray_container_and_a_local_ray(tmp_path, monkeypatch):
    document = yaml.safe_load(SERVE_GPU.read_text())
    assert "http_front" not in document["applications"][0]["args"]  # HAProxy is the default front
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(document))
    manifest = render_rayservice(path)
    cluster = manifest["spec"]["rayClusterConfig"]
    containers = [cluster["headGroupSpec"]["template"]["spec"]["containers"][0]]
    containers += [group["template"]["spec"]["containers"][0] for group in cluster["workerGroupSpecs"]]
    wanted = [
        {"name": "RAY_SERVE_THROUGHPUT_OPTIMIZED", "value": "1"},
        {"name": "RAY_SERVE_ENABLE_HA_PROXY", "value": "1"},
        {"name": "RAY_worker_niceness", "value": "0"},
    ]
    assert all(container["env"] == wanted for container in containers)
    if CRD.is_file():
        jsonschema.validate(manifest, _crd_schema())
    head = render_rayservice(SERVE_GPU)["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["env"] == wanted
    document["applications"][0]["args"]["http_front"] = "ray-proxy"
    path.write_text(yaml.safe_dump(document))
    head = render_rayservice(path)["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["env"] == [{"name": "RAY_worker_niceness", "value": "0"}]  # serving on a par
    document["applications"][0]["args"].update(http_front="ray-proxy", ray_worker_niceness=None)
    path.write_text(yaml.safe_dump(document))
    head = render_rayservice(path)["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert "env" not in head["containers"][0]  # Ray's own defaults: nothing to set
    document["applications"][0]["args"]["http_front"] = "haproxy"
    path.write_text(yaml.safe_dump(document))

    # `blockserve serve` starting Ray here: the variables are set for the processes it starts; the user's win.
    from service.app import prepare_ray_environment

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_SERVE_ENABLE_HA_PROXY", raising=False)
    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    monkeypatch.setenv("RAY_SERVE_THROUGHPUT_OPTIMIZED", "0")
    prepare_ray_environment(read_serve_config(path)[1])

    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "0"
    assert "RAY_worker_niceness" not in os.environ  # this config asked for Ray's own
    with pytest.raises(ValidationError, match="http_front"):
        AppConfig.model_validate({**document["applications"][0]["args"], "http_front": "nginx"})


def test_a_process_that_starts_ray_again_gets_its_environment_back(monkeypatch):
    """`served()` and `demo --once` wrap their Ray in this: the next Ray of the process (tests, benchmarks)
    must start from its own config, not with the last one's HAProxy variables."""
    from service.app import environment_restored, prepare_ray_environment

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_SERVE_ENABLE_HA_PROXY", raising=False)
    niceness = "RAY_worker_niceness"  # Ray's spelling, lower case included
    monkeypatch.setenv(niceness, "7")
    document = yaml.safe_load(SERVE_GPU.read_text())
    with environment_restored():
        prepare_ray_environment(AppConfig.model_validate(document["applications"][0]["args"]))
        assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
        assert os.environ[niceness] == "7"  # the user's wins
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in os.environ and os.environ[niceness] == "7"
