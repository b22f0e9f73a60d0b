"""Render helm/crucible with Helm's own engine (helm-python-sdk) and validate what comes out.

Kubernetes kinds are checked against the OpenAPI schemas that kubernetes-validate ships (offline),
RayCluster against KubeRay's CRD schema (schemas/ray.io_v1_raycluster.json), and the Prometheus
Operator kinds against a hand-written subset (schemas/monitoring.coreos.com_v1_subset.json).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "crucible"
CI_VALUES = CHART / "ci"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
RELEASE = "crucible"
NAMESPACE = "crucible"
# The chart's kubeVersion floor and the newest Kubernetes the installed kubernetes-validate knows.
KUBE_VERSIONS = ("1.25", kubernetes_validate.utils.latest_version())

helm.disable_logging()  # Helm logs each symlinked folder of the chart (files/) at INFO.


def values_files() -> list[Path]:
    return sorted(CI_VALUES.glob("*-values.yaml"))


def load_values(name: str) -> dict[str, Any]:
    """Values of helm/crucible/ci/<name>-values.yaml."""
    data = yaml.safe_load((CI_VALUES / f"{name}-values.yaml").read_text())
    return data if isinstance(data, dict) else {}


def render_templates(
    values: dict[str, Any], *, name: str = RELEASE, namespace: str = NAMESPACE
) -> dict[str, str]:
    """Template path → rendered text (HelmValuesError / HelmRenderError on bad values)."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values=values, name=name, namespace=namespace, is_install=True)


def render(values: dict[str, Any], **kwargs: str) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders for ``values`` (NOTES.txt left out)."""
    objects: list[dict[str, Any]] = []
    for path, text in sorted(render_templates(values, **kwargs).items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                objects.append({**doc, "_template": path})
    return objects


def strip(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as sent to Kubernetes: without the test's bookkeeping, nor empty annotations."""
    out = {k: v for k, v in obj.items() if k != "_template"}
    meta = dict(out.get("metadata", {}))
    if not meta.get("annotations"):
        meta.pop("annotations", None)
    out["metadata"] = meta
    return out


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in by_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def _strict(schema: Any) -> Any:
    """A CRD's structural schema with unknown fields refused: the API server would silently
    prune them, which hides typos in the chart."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def _crd_validator(filename: str) -> jsonschema.protocols.Validator:
    data = json.loads((SCHEMAS / filename).read_text())
    schema = _strict(data["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


@cache
def _monitoring_validators() -> dict[str, jsonschema.protocols.Validator]:
    data = json.loads((SCHEMAS / "monitoring.coreos.com_v1_subset.json").read_text())
    defs = data["definitions"]
    return {
        kind: jsonschema.Draft7Validator({"$ref": f"#/definitions/{kind}", "definitions": defs})
        for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule")
    }


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """Every schema violation of one object, as readable lines (empty when it is valid)."""
    obj = strip(obj)
    kind, api = obj["kind"], obj["apiVersion"]
    where = f"{kind}/{obj['metadata'].get('name')}"
    if api == "ray.io/v1":
        assert kind == "RayCluster", f"no schema kept for {kind}"
        validator = _crd_validator("ray.io_v1_raycluster.json")
        return [f"{where}: {e.json_path}: {e.message}" for e in validator.iter_errors(obj)]
    if api == "monitoring.coreos.com/v1":
        validator = _monitoring_validators()[kind]
        return [f"{where}: {e.json_path}: {e.message}" for e in validator.iter_errors(obj)]
    errors = []
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{where} (Kubernetes {version}): {e.json_path}: {e.message}")
    return errors


def pod_templates(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod templates an object carries (Deployment, StatefulSet, RayCluster groups, Pod)."""
    kind = obj["kind"]
    if kind in ("Deployment", "StatefulSet"):
        return [obj["spec"]["template"]]
    if kind == "Pod":
        return [obj]
    if kind == "RayCluster":
        spec = obj["spec"]
        return [spec["headGroupSpec"]["template"]] + [
            g["template"] for g in spec.get("workerGroupSpecs", [])
        ]
    return []


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())
