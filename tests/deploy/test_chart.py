"""helm/crucible rendered by Helm's engine (helm-python-sdk, Helm 4), linted, and every object
validated against Kubernetes' and KubeRay's schemas, for each values file of helm/crucible/ci/."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml

from tests.deploy.render import (
    CHART,
    NAMESPACE,
    RELEASE,
    ROOT,
    by_kind,
    load_values,
    one,
    pod_templates,
    render,
    render_templates,
    schema_errors,
    selects,
    values_files,
)

VALUES = [p.name.removesuffix("-values.yaml") for p in values_files()]
FULLNAME = RELEASE  # the release name "crucible" already holds the chart name
RAY = f"{FULLNAME}-ray"
RECOMMENDED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)
RAY_PORTS = {6379, 8265, 10001}


@pytest.fixture(scope="module", params=VALUES)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(load_values(request.param))


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _api(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment", FULLNAME)


def _config(objects: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = one(objects, "ConfigMap", f"{FULLNAME}-config")["data"]
    return data


# -- the values files and lint --------------------------------------------------------------


def test_values_files_cover_the_issue() -> None:
    assert {"minimal", "gpu", "external-db", "ingress"} <= set(VALUES)


@pytest.mark.parametrize("name", VALUES)
def test_lint_strict(name: str) -> None:
    report = helm.lint(CHART, load_values(name), strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


def test_values_schema_is_valid_draft7() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)


def test_default_values_pass_the_schema() -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(chart.values)


# -- every object valid, labelled, namespaced ------------------------------------------------


def test_every_object_matches_its_schema(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    errors = [line for obj in objects for line in schema_errors(obj)]
    assert not errors, "\n".join(errors)


def test_every_object_has_the_recommended_labels(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        labels = obj["metadata"].get("labels", {})
        for key in RECOMMENDED_LABELS:
            assert labels.get(key), f"{where} lacks {key}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/part-of"] == "crucible"
        for template in pod_templates(obj):
            pod_labels = template["metadata"]["labels"]
            for key in RECOMMENDED_LABELS:
                assert pod_labels.get(key), f"a pod of {where} lacks {key}"


def test_every_object_is_namespaced(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    for obj in objects:
        assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]


def test_names_are_unique_per_kind(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    keys = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys))


def test_no_pod_mounts_a_service_account_token(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    for obj in objects:
        for template in pod_templates(obj):
            assert template["spec"]["automountServiceAccountToken"] is False, obj["kind"]


def test_services_select_only_their_own_pods(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    """Ray and PostgreSQL pods carry the release's name and instance labels too: each Service
    must select by component as well, or the API Service would send requests to Ray pods."""
    _, objects = rendered
    pods = [
        (obj["kind"], obj["metadata"]["name"], t["metadata"]["labels"])
        for obj in objects
        for t in pod_templates(obj)
        if obj["kind"] != "Pod"
    ]
    for service in by_kind(objects, "Service"):
        selected = {(k, n) for k, n, labels in pods if selects(service["spec"]["selector"], labels)}
        component = service["metadata"]["labels"]["app.kubernetes.io/component"]
        owners = {
            (k, n) for k, n, labels in pods if labels["app.kubernetes.io/component"] == component
        }
        assert selected == owners and selected, service["metadata"]["name"]


# -- the API ---------------------------------------------------------------------------------


def test_api_gets_its_secrets_from_existing_secrets(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    name, objects = rendered
    values = load_values(name)
    container = _api(objects)["spec"]["template"]["spec"]["containers"][0]
    env = _env(container)
    token = env["CRUCIBLE_BOOTSTRAP_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": values["auth"]["bootstrapTokenSecret"], "key": "token"}
    key = env["CRUCIBLE_SECRET_KEY"]["valueFrom"]["secretKeyRef"]
    assert key == {"name": values["auth"]["secretKeySecret"], "key": "secret_key"}
    ray_token = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ray_token["name"] == values.get("ray", {}).get("authTokenSecret", "crucible-ray-auth")
    assert _config(objects)["RAY_AUTH_MODE"] == "token"
    metrics_secret = values.get("metrics", {}).get("tokenSecret")
    if metrics_secret:
        metrics_token = env["CRUCIBLE_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert metrics_token == {"name": metrics_secret, "key": "token"}
    else:
        assert "CRUCIBLE_METRICS_TOKEN" not in env
    assert "CRUCIBLE_METRICS_TOKEN" not in _config(objects)
    # Secrets come from Secrets only, never as plain values.
    secrets = ["CRUCIBLE_BOOTSTRAP_TOKEN", "CRUCIBLE_SECRET_KEY", "RAY_AUTH_TOKEN"]
    for secret in secrets + (["CRUCIBLE_METRICS_TOKEN"] if metrics_secret else []):
        assert set(env[secret]) == {"name", "valueFrom"}
    assert container["envFrom"] == [{"configMapRef": {"name": f"{FULLNAME}-config"}}]


def test_api_config_points_at_ray_and_serve(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = rendered
    values = load_values(name)
    config = _config(objects)
    if values.get("rayCluster", {}).get("enabled", True):
        host = f"{RAY}-head-svc.{NAMESPACE}.svc"
        assert config["RAY_ADDRESS"] == f"{host}:6379"
        assert config["CRUCIBLE_RAY_DASHBOARD_URL"] == f"http://{host}:8265"
        assert config["CRUCIBLE_RAY_AUTOSCALING"] == "true"
    else:
        assert config["RAY_ADDRESS"] == values["ray"]["address"]
        assert config["CRUCIBLE_RAY_DASHBOARD_URL"] == values["ray"]["dashboardUrl"]
        assert not by_kind(objects, "RayCluster")
    # Serve's proxy must listen beyond loopback for the head Service to reach it.
    assert config["CRUCIBLE_SERVE_HOST"] == "0.0.0.0"
    assert config["CRUCIBLE_API_URL"] == f"http://{FULLNAME}.{NAMESPACE}.svc:8080"
    assert config["CRUCIBLE_MAX_UPLOAD_BYTES"] == "536870912"


def test_config_checksum_rolls_the_api(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    annotations = _api(objects)["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])


def test_hpa_replaces_replicas() -> None:
    objects = render(load_values("ingress"))
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    assert "replicas" not in _api(objects)["spec"]
    assert not by_kind(render(load_values("minimal")), "HorizontalPodAutoscaler")


# -- database ---------------------------------------------------------------------------------


def test_in_chart_postgresql() -> None:
    objects = render(load_values("minimal"))
    sts = one(objects, "StatefulSet", f"{FULLNAME}-postgresql")
    pg = sts["spec"]["template"]["spec"]["containers"][0]
    password = _env(pg)["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password == {"name": "crucible-postgresql", "key": "password"}
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    env = _env(_api(objects)["spec"]["template"]["spec"]["containers"][0])
    assert env["CRUCIBLE_DATABASE_PASSWORD"]["valueFrom"]["secretKeyRef"] == password
    # Kubernetes expands $(VAR) from variables defined before it in the same list.
    names = list(env)
    assert names.index("CRUCIBLE_DATABASE_PASSWORD") < names.index("CRUCIBLE_DATABASE_URL")
    assert env["CRUCIBLE_DATABASE_URL"]["value"] == (
        "postgresql+psycopg://crucible:$(CRUCIBLE_DATABASE_PASSWORD)"
        f"@{FULLNAME}-postgresql:5432/crucible"
    )
    one(objects, "Service", f"{FULLNAME}-postgresql")
    # Only the API pods reach PostgreSQL.
    policy = one(objects, "NetworkPolicy", f"{FULLNAME}-postgresql")
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 5432, "protocol": "TCP"}]
    assert rule["from"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "crucible",
                    "app.kubernetes.io/instance": RELEASE,
                    "app.kubernetes.io/component": "api",
                }
            }
        }
    ]


def test_external_database_from_existing_secret() -> None:
    objects = render(load_values("external-db"))
    assert not by_kind(objects, "StatefulSet")
    assert not by_kind(objects, "Secret"), "the URL stays in the existing Secret"
    env = _env(_api(objects)["spec"]["template"]["spec"]["containers"][0])
    assert env["CRUCIBLE_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "crucible-db",
        "key": "url",
    }
    assert "CRUCIBLE_DATABASE_PASSWORD" not in env


def test_external_database_from_url_in_values() -> None:
    values = load_values("external-db-url")
    objects = render(values)
    secret = one(objects, "Secret", f"{FULLNAME}-database")
    assert base64.b64decode(secret["data"]["url"]).decode() == values["database"]["url"]
    env = _env(_api(objects)["spec"]["template"]["spec"]["containers"][0])
    assert (
        env["CRUCIBLE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"]
        == secret["metadata"]["name"]
    )
    assert "checksum/database" in _api(objects)["spec"]["template"]["metadata"]["annotations"]
    # No artifact volume: the given root is used as is.
    assert _config(objects)["CRUCIBLE_ARTIFACT_ROOT"] == "/mnt/shared/crucible"
    assert not by_kind(objects, "PersistentVolumeClaim")


# -- artifacts --------------------------------------------------------------------------------


def test_artifact_volume_is_shared_by_api_and_ray() -> None:
    objects = render(load_values("minimal"))
    claim = one(objects, "PersistentVolumeClaim", f"{FULLNAME}-artifacts")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    root = _config(objects)["CRUCIBLE_ARTIFACT_ROOT"]
    for obj in (_api(objects), one(objects, "RayCluster")):
        for template in pod_templates(obj):
            spec = template["spec"]
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert (
                volumes["artifacts"]["persistentVolumeClaim"]["claimName"]
                == claim["metadata"]["name"]
            )
            mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
            assert mounts["artifacts"] == root
    external = render(load_values("external-db"))
    assert not by_kind(external, "PersistentVolumeClaim")
    volumes = _api(external)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "artifacts", "persistentVolumeClaim": {"claimName": "shared-artifacts"}} in (
        volumes
    )


# -- the RayCluster ---------------------------------------------------------------------------


def _ray_containers(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for t in pod_templates(cluster) for c in t["spec"]["containers"]]


def test_ray_token_auth_everywhere(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = rendered
    clusters = by_kind(objects, "RayCluster")
    if load_values(name).get("rayCluster", {}).get("enabled", True) is False:
        assert not clusters
        return
    (cluster,) = clusters
    autoscaler = cluster["spec"]["autoscalerOptions"]
    for holder in [*_ray_containers(cluster), autoscaler]:
        env = _env(holder)
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": "crucible-ray-auth",
            "key": "auth_token",
        }


def test_raycluster_head_and_cpu_workers() -> None:
    cluster = one(render(load_values("minimal")), "RayCluster", RAY)
    spec = cluster["spec"]
    assert spec["rayVersion"] == "2.60.0"
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    assert head["rayStartParams"]["num-cpus"] == "0"
    ports = {
        p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]
    }
    assert ports == {
        "gcs-server": 6379,
        "dashboard": 8265,
        "client": 10001,
        "serve": 8000,
        "metrics": 8080,
    }
    (cpu,) = spec["workerGroupSpecs"]
    assert cpu["groupName"] == "cpu"
    assert (cpu["minReplicas"], cpu["maxReplicas"]) == (1, 4)
    limits = cpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits


def test_gpu_worker_groups_from_a_map() -> None:
    values = load_values("gpu")
    cluster = one(render(values), "RayCluster", RAY)
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", *values["rayCluster"]["gpuWorkerGroups"]}
    assert (groups["cpu"]["minReplicas"], groups["cpu"]["maxReplicas"]) == (0, 8)
    for name, want in values["rayCluster"]["gpuWorkerGroups"].items():
        group = groups[name]
        assert group["minReplicas"] == want.get("minReplicas", 0)
        assert group["maxReplicas"] == want["maxReplicas"]
        assert group["replicas"] == group["minReplicas"]
        pod = group["template"]["spec"]
        container = pod["containers"][0]
        assert container["image"] == "registry.example.com/crucible-ray:0.1.0-py311-gpu"
        for part in ("requests", "limits"):
            assert container["resources"][part]["nvidia.com/gpu"] == want["gpus"]
            assert container["resources"][part]["cpu"] == want["resources"][part]["cpu"]
        assert pod["nodeSelector"] == want["nodeSelector"]
        gpu_toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        assert gpu_toleration in pod["tolerations"]
        if "tolerations" in want:
            assert pod["tolerations"] == want["tolerations"]
    assert groups["h100x4"]["rayStartParams"]["resources"] == '"{\\"H100\\": 4}"'
    assert cluster["spec"]["autoscalerOptions"]["upscalingMode"] == "Conservative"
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == "registry.example.com/crucible-ray:0.1.0-py311"


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ({"A10G": {"maxReplicas": 1}}, "A10G"),
        ({"a10g": {"minReplicas": 3, "maxReplicas": 2}}, "minReplicas"),
        ({"a10g": {"gpus": 0}}, "gpus"),
    ],
)
def test_bad_gpu_groups_are_refused(groups: dict[str, Any], message: str) -> None:
    values = load_values("minimal")
    values["rayCluster"] = {"gpuWorkerGroups": groups}
    with pytest.raises(helm.HelmError, match=message):
        render_templates(values)


# -- network policies --------------------------------------------------------------------------


def _peer_is(peer: dict[str, Any], labels: dict[str, str]) -> bool:
    return set(peer) == {"podSelector"} and peer["podSelector"] == {"matchLabels": labels}


def test_only_api_and_ray_pods_reach_ray_ports(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    name, objects = rendered
    if load_values(name).get("rayCluster", {}).get("enabled", True) is False:
        assert not [p for p in by_kind(objects, "NetworkPolicy") if p["metadata"]["name"] == RAY]
        return
    policy = one(objects, "NetworkPolicy", RAY)
    ray_pods = {"ray.io/cluster": RAY}
    api_pods = {
        "app.kubernetes.io/name": "crucible",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": "api",
    }
    assert policy["spec"]["podSelector"] == {"matchLabels": ray_pods}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        peers = rule.get("from", [])
        if not ports or ports & RAY_PORTS:
            # All ports, or a Ray port: Ray pods, or the API pods of this release, nothing else.
            assert peers, f"rule {rule} admits any source to Ray's ports"
            assert all(_peer_is(p, ray_pods) or _peer_is(p, api_pods) for p in peers), rule
            if not ports:
                assert all(_peer_is(p, ray_pods) for p in peers), rule
    api_rule = next(
        r
        for r in policy["spec"]["ingress"]
        if any(_peer_is(p, api_pods) for p in r.get("from", []))
    )
    assert {p["port"] for p in api_rule["ports"]} >= RAY_PORTS
    # And the selector really matches the API pods, not the Ray or PostgreSQL ones.
    for obj in objects:
        for template in pod_templates(obj):
            labels = template["metadata"]["labels"]
            assert selects(api_pods, labels) == (obj["kind"] == "Deployment"), obj["kind"]


def test_api_policy_admits_only_http(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    policy = one(objects, "NetworkPolicy", FULLNAME)
    assert [r["ports"] for r in policy["spec"]["ingress"]] == [[{"port": 8080, "protocol": "TCP"}]]


# -- ingresses ----------------------------------------------------------------------------------


def test_api_and_serve_ingresses() -> None:
    objects = render(load_values("ingress"))
    api = one(objects, "Ingress", FULLNAME)
    assert api["spec"]["ingressClassName"] == "nginx"
    assert api["spec"]["tls"] == [{"hosts": ["crucible.example.com"], "secretName": "crucible-tls"}]
    backend = api["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": FULLNAME, "port": {"name": "http"}}
    serve = one(objects, "Ingress", f"{FULLNAME}-serve")
    backend = serve["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{RAY}-head-svc", "port": {"number": 8000}}
    assert _config(objects)["CRUCIBLE_SERVE_URL"] == "https://models.example.com"
    assert not by_kind(render(load_values("minimal")), "Ingress")


# -- monitoring ----------------------------------------------------------------------------------


def test_monitors_and_rules() -> None:
    objects = render(load_values("ingress"))
    sm = one(objects, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["endpoints"][0]["relabelings"][0]["replacement"] == "crucible-api"
    assert sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "api"
    pm = one(objects, "PodMonitor")
    assert pm["spec"]["selector"] == {"matchLabels": {"ray.io/cluster": RAY}}
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    rule = one(objects, "PrometheusRule")
    source = yaml.safe_load((ROOT / "dashboards/prometheus/crucible-alerts.yaml").read_text())
    assert rule["spec"]["groups"] == source["groups"]
    minimal = render(load_values("minimal"))
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        assert not by_kind(minimal, kind)


def test_service_monitor_scrapes_with_the_metrics_token() -> None:
    """GET /metrics takes the metrics token (or an admin's): the ServiceMonitor sends the token
    of metrics.tokenSecret as a bearer token, and the API gets the same Secret's token as
    CRUCIBLE_METRICS_TOKEN."""
    values = load_values("ingress")
    secret = values["metrics"]["tokenSecret"]
    objects = render(values)
    (endpoint,) = one(objects, "ServiceMonitor", FULLNAME)["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": secret, "key": "token"},
    }
    env = _env(_api(objects)["spec"]["template"]["spec"]["containers"][0])
    assert env["CRUCIBLE_METRICS_TOKEN"] == {
        "name": "CRUCIBLE_METRICS_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}},
    }
    # Ray's metrics port is not the API's: the PodMonitor sends no API token.
    (ray_endpoint,) = one(objects, "PodMonitor")["spec"]["podMetricsEndpoints"]
    assert "authorization" not in ray_endpoint
    notes = render_templates(values)["crucible/templates/NOTES.txt"]
    assert f'bearer token of Secret "{secret}"' in notes


def test_metrics_token_without_the_service_monitor() -> None:
    """A Prometheus configured by hand scrapes with the token too: the API gets it whenever
    metrics.tokenSecret is set, with or without the ServiceMonitor."""
    values = load_values("minimal")
    values["metrics"] = {"tokenSecret": "crucible-metrics"}
    objects = render(values)
    assert not by_kind(objects, "ServiceMonitor")
    env = _env(_api(objects)["spec"]["template"]["spec"]["containers"][0])
    assert env["CRUCIBLE_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "crucible-metrics",
        "key": "token",
    }
    assert not schema_errors(_api(objects))


def test_monitoring_schema_refuses_a_malformed_authorization() -> None:
    """The hand-written monitoring.coreos.com subset types `authorization` as the operator
    does: a SecretKeySelector needs its key, unknown fields and the Basic type are refused."""
    sm = one(render(load_values("ingress")), "ServiceMonitor")
    assert not schema_errors(sm)
    bad_authorizations: list[dict[str, Any]] = [
        {"type": "Bearer", "credentials": {"name": "crucible-metrics"}},
        {"type": "Bearer", "credentials": {"name": "crucible-metrics", "key": "token", "x": 1}},
        {"type": "basic", "credentials": {"name": "crucible-metrics", "key": "token"}},
        {"type": "Bearer", "secret": "crucible-metrics"},
    ]
    for authorization in bad_authorizations:
        endpoint = {**sm["spec"]["endpoints"][0], "authorization": authorization}
        broken = {**sm, "spec": {**sm["spec"], "endpoints": [endpoint]}}
        assert schema_errors(broken), authorization


def test_dashboards_configmap_holds_dashboards_folder() -> None:
    objects = render(load_values("minimal"))
    cm = one(objects, "ConfigMap", f"{FULLNAME}-dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = sorted((ROOT / "dashboards" / "grafana").glob("*.json"))
    assert sorted(cm["data"]) == [f.name for f in files]
    for f in files:
        assert json.loads(cm["data"][f.name]) == json.loads(f.read_text()), f.name
    # ConfigMaps hold at most 1 MiB.
    assert sum(len(v.encode()) for v in cm["data"].values()) < 1024 * 1024


def test_chart_files_link_to_dashboards_folder() -> None:
    """The chart reads dashboards/ through links: one copy, nothing to keep in sync."""
    for sub in ("grafana", "prometheus"):
        link = CHART / "files" / sub
        assert link.is_symlink(), link
        assert os.path.samefile(link, ROOT / "dashboards" / sub)


# -- required values and the schema ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda v: v["auth"].pop("bootstrapTokenSecret"), "auth.bootstrapTokenSecret is required"),
        (lambda v: v["auth"].pop("secretKeySecret"), "auth.secretKeySecret is required"),
        (lambda v: v.pop("postgresql"), "postgresql.auth.existingSecret is required"),
        (
            lambda v: v.update(postgresql={"enabled": False}),
            "database.url or database.existingSecret is required",
        ),
        (lambda v: v.update(rayCluster={"enabled": False}), "ray.address is required"),
        (lambda v: v.update(ray={"authTokenSecret": ""}), "ray.authTokenSecret is required"),
        (
            lambda v: v.update(ingress={"enabled": True, "tls": {"enabled": True}}),
            "ingress.tls.secretName is required",
        ),
        (
            lambda v: v.update(artifacts={"persistence": {"enabled": False}}),
            "artifacts.root is required",
        ),
        (
            # A scrape without the token can only get 401.
            lambda v: v.update(metrics={"serviceMonitor": {"enabled": True}}),
            "metrics.tokenSecret is required when metrics.serviceMonitor.enabled is true: "
            "GET /metrics answers 401 without a token, so name an existing Secret with key "
            "'token'",
        ),
        (
            # Prometheus's configuration would hold an admin's token.
            lambda v: v.update(metrics={"tokenSecret": v["auth"]["bootstrapTokenSecret"]}),
            "metrics.tokenSecret must not be auth.bootstrapTokenSecret",
        ),
    ],
)
def test_missing_required_values_fail_with_a_message(change: Any, message: str) -> None:
    values = load_values("minimal")
    change(values)
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render_templates(values)


@pytest.mark.parametrize(
    "values",
    [
        {"replicas": 2},
        {"rayCluster": {"cpuWorkers": {"maxReplica": 3}}},
        {"ray": {"address": "http://ray:6379"}},
        {"image": {"pullPolicy": "Sometimes"}},
        {"artifacts": {"root": "s3://bucket/crucible"}},
        {"metrics": {"tokenSecret": "Crucible_Metrics"}},
        {"metrics": {"token": "not-a-secret-name"}},
    ],
)
def test_schema_refuses_unknown_or_malformed_values(values: dict[str, Any]) -> None:
    merged = {**load_values("minimal"), **values}
    with pytest.raises(helm.HelmValuesError):
        render_templates(merged)


# -- documentation ------------------------------------------------------------------------------


def _leaves(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of values.yaml's documented leaves: objects whose schema lists their
    properties are walked into, anything else (maps, lists, scalars) is one value."""
    out = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        node = schema.get("properties", {}).get(key, {})
        kubernetes_type = node.get("description", "").startswith("Kubernetes")
        if isinstance(value, dict) and "properties" in node and not kubernetes_type:
            out += _leaves(value, node, f"{path}.")
        else:
            out.append(path)
    return out


def test_every_value_is_documented_in_the_readme() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    readme = (CHART / "README.md").read_text()
    table = readme.split("\n## Values\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([^`]+)` \|", table, flags=re.M))
    leaves = _leaves(values, schema)
    assert len(leaves) > 50
    missing = [path for path in leaves if path not in documented]
    assert not missing, f"values not in helm/crucible/README.md's table: {missing}"
    stale = sorted(documented - set(leaves))
    assert not stale, f"README documents values that do not exist: {stale}"


def test_every_values_key_has_a_comment() -> None:
    """Every value in values.yaml is commented: the key itself, or a block it sits in."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, commented) of the open blocks
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w./-]*):(.*)$", line)
        if not match or line.lstrip().startswith("#"):
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        commented = j >= 0 and lines[j].strip().startswith("#")
        covered = commented or any(c for _, c in stack)
        rest = match.group(3).split("#")[0].strip()
        if rest:
            assert covered, f"values.yaml line {i + 1}: {line.strip()} is undocumented"
        else:
            stack.append((indent, covered))


def test_notes_tell_how_to_reach_the_api_and_get_the_token() -> None:
    notes = render_templates(load_values("minimal"))["crucible/templates/NOTES.txt"]
    assert f"port-forward svc/{FULLNAME} 8080:8080" in notes
    assert "get secret crucible-bootstrap -o jsonpath='{.data.token}' | base64 -d" in notes
    ingress = render_templates(load_values("ingress"))["crucible/templates/NOTES.txt"]
    assert "https://crucible.example.com/" in ingress


def test_chart_metadata() -> None:
    with helm.Chart.load(CHART) as chart:
        meta = chart.metadata
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "crucible"
    assert meta["kubeVersion"].startswith(">=1.25")
    assert not meta.get("dependencies"), "no subchart: nothing to fetch before installing"


def test_helm_test_pod_stays_out_of_selectors() -> None:
    objects = render(load_values("minimal"))
    pod = one(objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    labels = pod["metadata"]["labels"]
    for service in by_kind(objects, "Service"):
        assert not selects(service["spec"]["selector"], labels)


def test_packaged_chart_carries_the_dashboards(tmp_path: Path) -> None:
    """`helm package` stores the linked dashboards, so a packaged chart renders them too."""
    archive = helm.package(CHART, destination=tmp_path)
    with helm.Chart.load(archive) as chart:
        names = {f["name"] for f in chart.files}
        manifests = chart.render(values=load_values("minimal"), name=RELEASE, namespace=NAMESPACE)
    expected = {f"files/grafana/{p.name}" for p in (ROOT / "dashboards" / "grafana").glob("*")}
    assert expected <= names
    assert "files/prometheus/crucible-alerts.yaml" in names
    assert not any(n.startswith("ci/") for n in names), ".helmignore keeps ci/ out"
    cm = yaml.safe_load(manifests["crucible/templates/dashboards-configmap.yaml"])
    assert len(cm["data"]) == len(expected)
