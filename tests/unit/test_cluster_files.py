"""Cluster definitions, runtime env, job entrypoints and configs, checked without a cluster.

The Ray cluster-launcher YAML is validated against the JSON schema Ray ships
(ray/autoscaler/ray-schema.json), before and after merging Ray's provider defaults exactly as
`ray up` does. The KubeRay files are validated against a JSON schema of the fields the KubeRay
v1 CRDs define and require (ray-operator/apis/ray/v1/{raycluster,rayjob}_types.go: required
fields, known field names so that a misspelt one fails, Kubernetes quantities), plus what
raysys needs of them. Each check is also shown to reject a broken copy.
"""

from __future__ import annotations

import copy
import json
import re
import runpy
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from raysys.stages import STAGES, load_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
PAPER_CONFIGS = ["imagenet_lt_sd21.yaml", "iwildcam_adaptive.yaml"]


def _yaml(rel: str):
    return yaml.safe_load((REPO / rel).read_text())


def _installed_ray_version() -> str:
    from importlib.metadata import version

    return version("ray")


# --- configs -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path):
    import timm

    from raysys.models.classifiers import registered_names

    cfg = load_config(path)  # unknown keys and bad values raise ConfigError
    assert cfg.classifier.name in registered_names() or timm.is_model(cfg.classifier.name)


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_configs_are_made_for_a_gpu_cluster(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.run.root.startswith("s3://")  # every node reaches it
    assert cfg.run.hf_home == _pvc_mount_path()  # the cache cluster/kuberay mounts
    assert cfg.train.use_gpu and cfg.train.num_workers > 1
    assert cfg.score.num_gpus > 0 and cfg.score.max_actors > 1


# --- runtime env and job entrypoints ---------------------------------------------------------


def test_runtime_env_is_one_ray_accepts():
    from ray.runtime_env import RuntimeEnv

    env = _yaml("cluster/runtime_env.yaml")
    RuntimeEnv(**env)  # Ray's own validation of every field
    assert env["working_dir"] == "."
    assert {".venv/", "runs/", ".git/"} <= set(env["excludes"])
    with pytest.raises(TypeError):
        RuntimeEnv(**{**env, "env_vars": {"PYTHONUNBUFFERED": 1}})  # the check is real


def test_there_is_one_job_entrypoint_per_registered_stage_and_one_for_run():
    assert {p.stem for p in (REPO / "jobs").glob("*.py")} == {s.name for s in STAGES} | {"pipeline"}


@pytest.mark.parametrize("script, stage", [(s.name, s.command) for s in STAGES] + [("pipeline", "run")])
def test_job_entrypoints_run_the_cli(script, stage, monkeypatch):
    calls = []
    monkeypatch.setattr("raysys.cli.main", lambda argv: calls.append(argv) or 0)
    monkeypatch.setattr(sys, "argv", [f"jobs/{script}.py", "configs/tiny.yaml", "train.epochs=2"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / "jobs" / f"{script}.py"), run_name="__main__")
    assert done.value.code == 0
    assert calls == [[stage, "configs/tiny.yaml", "train.epochs=2"]]


# --- Ray cluster launcher ------------------------------------------------------------------


def _launcher_checked(config: dict) -> dict:
    """Validate as `ray up` does: the file against Ray's schema, then merged with defaults."""
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_launcher_yaml_passes_rays_schema():
    config = _launcher_checked(_yaml("cluster/aws.yaml"))
    types = config["available_node_types"]
    head_type = config["head_node_type"]
    assert types[head_type]["resources"] == {"CPU": 0}  # the head schedules no work
    workers = {name: t for name, t in types.items() if name != head_type}
    assert workers
    for name, t in workers.items():
        assert t["min_workers"] == 0 and t["max_workers"] > 0, name  # autoscaled from zero
        assert t["resources"]["GPU"] >= 1, name
    for cmd in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        assert "ray stop" in cmd or "RAY_AUTH_MODE=token ray start" in cmd, cmd
    assert f"ray[data,train,tune,default]=={_installed_ray_version()}" in " ".join(config["setup_commands"])


@pytest.mark.parametrize("mistake", [
    "drop node_config", "misspelt min_workers", "GPU count as text", "unknown head type", "no provider",
])
def test_cluster_launcher_check_rejects_mistakes(mistake):
    config = _yaml("cluster/aws.yaml")
    gpu = config["available_node_types"]["gpu_1x_a10g"]
    if mistake == "drop node_config":
        del gpu["node_config"]
    elif mistake == "misspelt min_workers":
        gpu["min_worker"] = gpu.pop("min_workers")
    elif mistake == "GPU count as text":
        gpu["resources"]["GPU"] = "1"
    elif mistake == "unknown head type":
        config["head_node_type"] = "head-node"
    else:
        del config["provider"]
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        _launcher_checked(config)


# --- KubeRay ---------------------------------------------------------------------------------

# Kubernetes resource.Quantity, as the CRDs' x-kubernetes-int-or-string pattern spells it.
_QUANTITY = {"anyOf": [
    {"type": "integer", "minimum": 0},
    {"type": "string", "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"},
]}
_RESOURCES = {"type": "object", "additionalProperties": False, "properties": {
    "limits": {"type": "object", "additionalProperties": _QUANTITY},
    "requests": {"type": "object", "additionalProperties": _QUANTITY},
}}
_CONTAINER = {"type": "object", "required": ["name", "image"], "properties": {
    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
    "image": {"type": "string", "minLength": 1},
    "resources": _RESOURCES,
    "env": {"type": "array"}, "ports": {"type": "array"}, "volumeMounts": {"type": "array"},
}}
_POD_TEMPLATE = {"type": "object", "required": ["spec"], "properties": {
    "metadata": {"type": "object"},
    "spec": {"type": "object", "required": ["containers"], "properties": {
        "containers": {"type": "array", "minItems": 1, "items": _CONTAINER},
        "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
    }},
}}
_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}  # map[string]string
_INT = {"type": "integer", "minimum": 0}
_HEAD_GROUP = {"type": "object", "required": ["rayStartParams", "template"], "additionalProperties": False, "properties": {
    "serviceType": {"type": "string"}, "headService": {"type": "object"}, "enableIngress": {"type": "boolean"},
    "rayStartParams": _START_PARAMS, "template": _POD_TEMPLATE, "labels": {"type": "object"},
    "resources": {"type": "object"}, "suspend": {"type": "boolean"},
}}
_WORKER_GROUP = {"type": "object", "additionalProperties": False,
                 "required": ["groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"], "properties": {
    "groupName": {"type": "string", "minLength": 1}, "replicas": _INT, "minReplicas": _INT, "maxReplicas": _INT,
    "numOfHosts": {"type": "integer", "minimum": 1}, "idleTimeoutSeconds": _INT, "suspend": {"type": "boolean"},
    "rayStartParams": _START_PARAMS, "template": _POD_TEMPLATE, "scaleStrategy": {"type": "object"},
    "labels": {"type": "object"}, "resources": {"type": "object"},
}}
_CLUSTER_SPEC = {"type": "object", "required": ["headGroupSpec"], "additionalProperties": False, "properties": {
    "headGroupSpec": _HEAD_GROUP,
    "workerGroupSpecs": {"type": "array", "items": _WORKER_GROUP},
    "rayVersion": {"type": "string"},
    "enableInTreeAutoscaling": {"type": "boolean"},
    "autoscalerOptions": {"type": "object", "additionalProperties": False, "properties": {
        "resources": _RESOURCES, "image": {"type": "string"}, "imagePullPolicy": {"type": "string"},
        "env": {"type": "array"}, "envFrom": {"type": "array"}, "volumeMounts": {"type": "array"},
        "securityContext": {"type": "object"}, "idleTimeoutSeconds": _INT,
        "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]}, "version": {"enum": ["v1", "v2"]},
    }},
    "authOptions": {"type": "object", "properties": {"mode": {"enum": ["disabled", "token"]}}},
    "headServiceAnnotations": {"type": "object"}, "suspend": {"type": "boolean"},
    "gcsFaultToleranceOptions": {"type": "object"}, "managedBy": {"type": "string"}, "upgradeStrategy": {"type": "object"},
}}
_METADATA = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}}}
RAYCLUSTER_SCHEMA = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
    "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayCluster"}, "metadata": _METADATA,
    "spec": _CLUSTER_SPEC,
}}
# entrypoint and a cluster (rayClusterSpec or clusterSelector) are optional in the CRD (an
# InteractiveMode job has neither); a RayJob that runs the pipeline needs both.
RAYJOB_SCHEMA = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
    "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"}, "metadata": _METADATA,
    "spec": {"type": "object", "additionalProperties": False, "required": ["entrypoint"],
             "oneOf": [{"required": ["rayClusterSpec"]}, {"required": ["clusterSelector"]}], "properties": {
        "entrypoint": {"type": "string", "minLength": 1}, "runtimeEnvYAML": {"type": "string"},
        "rayClusterSpec": _CLUSTER_SPEC, "clusterSelector": {"type": "object", "additionalProperties": {"type": "string"}},
        "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
        "shutdownAfterJobFinishes": {"type": "boolean"}, "ttlSecondsAfterFinished": _INT,
        "activeDeadlineSeconds": {"type": "integer", "minimum": 1}, "backoffLimit": _INT,
        "jobId": {"type": "string"}, "metadata": {"type": "object"}, "suspend": {"type": "boolean"},
        "entrypointNumCpus": {"type": "number"}, "entrypointNumGpus": {"type": "number"},
        "entrypointResources": {"type": "string"}, "submitterPodTemplate": _POD_TEMPLATE,
        "submitterConfig": {"type": "object"}, "managedBy": {"type": "string"}, "deletionStrategy": {"type": "object"},
        "schedule": {"type": "string"},
    }},
}}
PVC_SCHEMA = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
    "apiVersion": {"const": "v1"}, "kind": {"const": "PersistentVolumeClaim"}, "metadata": _METADATA,
    "spec": {"type": "object", "required": ["accessModes", "resources"], "properties": {
        "accessModes": {"type": "array", "items": {"enum": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]}},
        "resources": {"type": "object", "required": ["requests"], "properties": {
            "requests": {"type": "object", "required": ["storage"], "additionalProperties": _QUANTITY}}},
    }},
}}


def _pvc_mount_path() -> str:
    pvc = _yaml("cluster/kuberay/hf-cache-pvc.yaml")["metadata"]["name"]
    head = _yaml("cluster/kuberay/raycluster.yaml")["spec"]["headGroupSpec"]["template"]["spec"]
    volume = next(v["name"] for v in head["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == pvc)
    return next(m["mountPath"] for m in head["containers"][0]["volumeMounts"] if m["name"] == volume)


def _pods(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


def test_raycluster_passes_the_kuberay_schema():
    cluster = _yaml("cluster/kuberay/raycluster.yaml")
    jsonschema.validate(cluster, RAYCLUSTER_SCHEMA)
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    assert spec["rayVersion"] == _installed_ray_version()
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the head schedules no work
    head_limits = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head_limits
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == 0 and group["replicas"] <= group["maxReplicas"], group["groupName"]
        res = group["template"]["spec"]["containers"][0]["resources"]
        assert int(res["limits"]["nvidia.com/gpu"]) >= 1, group["groupName"]
        assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"]  # Kubernetes requires it
    # Every pod mounts the shared Hugging Face cache from the claim cluster/kuberay defines.
    pvc = _yaml("cluster/kuberay/hf-cache-pvc.yaml")
    jsonschema.validate(pvc, PVC_SCHEMA)
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    for pod in _pods(spec):
        claims = {v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
        assert pvc["metadata"]["name"] in claims
        assert _pvc_mount_path() in {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}


def test_rayjob_runs_the_pipeline_on_the_same_cluster_spec():
    job = _yaml("cluster/kuberay/rayjob.yaml")
    jsonschema.validate(job, RAYJOB_SCHEMA)
    spec = job["spec"]
    assert spec["rayClusterSpec"] == _yaml("cluster/kuberay/raycluster.yaml")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    words = spec["entrypoint"].split()
    assert words[:2] == ["python", "/home/ray/raysys/jobs/pipeline.py"]
    config = words[2].removeprefix("/home/ray/raysys/")
    overrides = [w for w in words[3:] if not w.startswith("run.root=")]  # the bucket is a placeholder
    load_config(REPO / config, overrides)
    assert any(w.startswith("run.root=s3://") for w in words)
    # The image holds the source at the path the entrypoint uses (cluster/Dockerfile).
    assert "COPY --chown=ray:users . /home/ray/raysys" in (REPO / "cluster/Dockerfile").read_text()
    # The job's runtime env is cluster/runtime_env.yaml's, less the working_dir upload.
    assert yaml.safe_load(spec["runtimeEnvYAML"]) == {"env_vars": _yaml("cluster/runtime_env.yaml")["env_vars"]}


def test_cluster_definitions_pin_the_same_ray_version():
    version = _installed_ray_version()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(version)}-", (REPO / "cluster/Dockerfile").read_text(), re.M)
    assert _yaml("cluster/kuberay/raycluster.yaml")["spec"]["rayVersion"] == version


@pytest.mark.parametrize("mistake", [
    "misspelt enableInTreeAutoscaling", "worker group without groupName", "container without image",
    "GPU limit as '1 GPU'", "rayStartParams value not a string", "wrong apiVersion",
])
def test_kuberay_check_rejects_mistakes(mistake):
    cluster = _yaml("cluster/kuberay/raycluster.yaml")
    spec = cluster["spec"]
    group = spec["workerGroupSpecs"][0]
    if mistake == "misspelt enableInTreeAutoscaling":
        spec["enableInTreeAutoScaling"] = spec.pop("enableInTreeAutoscaling")
    elif mistake == "worker group without groupName":
        del group["groupName"]
    elif mistake == "container without image":
        del group["template"]["spec"]["containers"][0]["image"]
    elif mistake == "GPU limit as '1 GPU'":
        group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "1 GPU"
    elif mistake == "rayStartParams value not a string":
        spec["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    else:
        cluster["apiVersion"] = "ray.io/v1alpha1"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cluster, RAYCLUSTER_SCHEMA)


def test_rayjob_check_rejects_a_job_without_a_cluster():
    job = _yaml("cluster/kuberay/rayjob.yaml")
    del job["spec"]["rayClusterSpec"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(job, RAYJOB_SCHEMA)
    job["spec"]["clusterSelector"] = {"ray.io/cluster": "raysys"}
    jsonschema.validate(job, RAYJOB_SCHEMA)
