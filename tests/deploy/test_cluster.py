"""cluster/: the settings `crucible up` uses, the VM cluster-launcher config, and the KubeRay
definitions (a values example for the chart, and a standalone RayCluster manifest)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import ray
import typer.main
import yaml

from services.cli import app
from tests.deploy.render import load_values, one, pod_templates, render, schema_errors, selects

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
RAY_PORTS = {6379, 8265, 10001}


def _env(holder: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in holder.get("env", [])}


def _ray_images(text: str) -> list[str]:
    return re.findall(r"rayproject/ray:([\w.-]+)", text)


# -- local.env ----------------------------------------------------------------------------------


def test_local_env_matches_crucible_up_defaults() -> None:
    """Each KEY=value of local.env is the default of the `crucible up` option read from KEY."""
    pairs = dict(
        line.split("=", 1)
        for line in (CLUSTER / "local.env").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    up = typer.main.get_command(app).commands["up"]  # type: ignore[attr-defined]
    options = {p.envvar: p.default for p in up.params if isinstance(p.envvar, str)}
    assert pairs.pop("RAY_AUTH_MODE") == "token"
    for key, value in pairs.items():
        assert key in options, f"local.env sets {key}, which `crucible up` does not read"
        assert options[key] == int(value), key
    documented = set(pairs) | {"CRUCIBLE_DATA_DIR"}
    assert set(options) <= documented, "every env option of `crucible up` is in local.env"


# -- the VM cluster launcher ----------------------------------------------------------------------


def test_launcher_config_matches_rays_schema() -> None:
    config = yaml.safe_load((CLUSTER / "launcher-gpu.yaml").read_text())
    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(config)]
    assert not errors, errors
    # A GPU worker type that scales, under the cluster's cap.
    gpu = config["available_node_types"]["ray.worker.gpu"]
    assert gpu["min_workers"] == 0 < gpu["max_workers"] <= config["max_workers"]
    # Token auth on every node that starts Ray.
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token" in command
    assert "~/.ray/auth_token" in config["file_mounts"]


# -- images and Ray version -----------------------------------------------------------------------


def test_ray_images_match_the_installed_ray() -> None:
    """Cluster images run the Ray version Crucible is built against (pyproject's pin)."""
    texts = [
        (CLUSTER / "launcher-gpu.yaml").read_text(),
        (CLUSTER / "kuberay-raycluster.yaml").read_text(),
        (ROOT / "helm" / "crucible" / "values.yaml").read_text(),
    ]
    tags = [tag for text in texts for tag in _ray_images(text)]
    assert tags
    for tag in tags:
        assert tag.startswith(ray.__version__ + "-py311"), tag
    for path in ("kuberay-raycluster.yaml", "kuberay-values.yaml"):
        assert f'rayVersion: "{ray.__version__}"' in (CLUSTER / path).read_text(), path


# -- KubeRay: values example for the chart -------------------------------------------------------


def test_kuberay_values_example_renders_valid_objects() -> None:
    example = yaml.safe_load((CLUSTER / "kuberay-values.yaml").read_text())
    values = {**load_values("minimal"), **example}
    objects = render(values)
    errors = [line for obj in objects for line in schema_errors(obj)]
    assert not errors, "\n".join(errors)
    cluster = one(objects, "RayCluster")
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", *example["rayCluster"]["gpuWorkerGroups"]}
    for name, want in example["rayCluster"]["gpuWorkerGroups"].items():
        limits = groups[name]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == want["gpus"]
    one(objects, "PodMonitor")


# -- KubeRay: standalone RayCluster manifest -------------------------------------------------------


def _standalone() -> list[dict[str, Any]]:
    docs = list(yaml.safe_load_all((CLUSTER / "kuberay-raycluster.yaml").read_text()))
    for doc in docs:
        doc["metadata"].setdefault("namespace", "crucible")
    return docs


def test_standalone_raycluster_is_valid() -> None:
    docs = _standalone()
    assert [d["kind"] for d in docs] == ["RayCluster", "NetworkPolicy"]
    errors = [line for doc in docs for line in schema_errors(doc)]
    assert not errors, "\n".join(errors)


def test_standalone_raycluster_has_token_auth_and_gpu_group() -> None:
    cluster = _standalone()[0]
    holders = [c for t in pod_templates(cluster) for c in t["spec"]["containers"]]
    for holder in [*holders, cluster["spec"]["autoscalerOptions"]]:
        env = _env(holder)
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "crucible-ray-auth"
    gpu = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    container = gpu["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert gpu["minReplicas"] == 0 < gpu["maxReplicas"]
    # The same artifact claim as the chart's default release "crucible".
    chart_claim = one(render(load_values("minimal")), "PersistentVolumeClaim")
    for template in pod_templates(cluster):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        claim = volumes["artifacts"]["persistentVolumeClaim"]["claimName"]
        assert claim == chart_claim["metadata"]["name"]


def test_standalone_policy_admits_only_ray_and_api_pods_to_ray_ports() -> None:
    policy = _standalone()[1]
    ray_pods = {"ray.io/cluster": "crucible-ray"}
    chart = render(load_values("minimal"))
    api_labels = one(chart, "Deployment")["spec"]["template"]["metadata"]["labels"]
    other_pods = [
        t["metadata"]["labels"]
        for obj in chart
        if obj["kind"] != "Deployment"
        for t in pod_templates(obj)
    ]
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        if ports and not ports & RAY_PORTS:
            continue
        assert rule.get("from"), f"{rule} admits any source to Ray's ports"
        for peer in rule["from"]:
            selector = peer["podSelector"]["matchLabels"]
            if selector == ray_pods:
                continue
            assert ports, "only Ray pods may reach every port"
            assert selects(selector, api_labels)
            assert not any(selects(selector, labels) for labels in other_pods)
