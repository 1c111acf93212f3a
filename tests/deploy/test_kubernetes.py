"""deploy/kubernetes: schema validity, kustomize consistency, and the links between the manifests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from sipauth.config import Settings, parse_listen
from sipauth.credentials.ldap_presets import resolve_profile
from tests.deploy.manifests import KUBERNETES, ROOT, SENTINEL, find, load_documents, settings_text
from tests.deploy.promql import METRICS, TARGET_LABELS, allowed_series, labels_of, usage

#: The oldest Kubernetes the manifests claim to support, and the newest the package knows.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
KUSTOMIZATIONS = (KUBERNETES, SENTINEL)
#: Files in a kustomization directory that are deliberately not applied.
NOT_APPLIED = {"secret.example.yaml"}


def _manifest_files() -> list[Path]:
    return [
        path
        for directory in KUSTOMIZATIONS
        for path in sorted(directory.glob("*.yaml"))
        if path.name != "kustomization.yaml"
    ]


def _core_documents() -> list[Any]:
    return [
        pytest.param(doc, id=f"{path.relative_to(KUBERNETES)}:{doc['kind']}/{doc['metadata']['name']}")
        for path in _manifest_files()
        for doc in load_documents(path)
        if doc["kind"] not in CRD_KINDS
    ]


def _settings() -> Settings:
    return Settings.model_validate(yaml.safe_load(settings_text()))


def _pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = find(KUBERNETES, "Deployment", "sipauth")["spec"]["template"]["spec"]
    return spec


def _container() -> dict[str, Any]:
    containers = _pod_spec()["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _secret_keys() -> set[str]:
    secret = find(KUBERNETES, "Secret", "sipauth")
    return set(secret.get("stringData", {})) | set(secret.get("data", {}))


@pytest.mark.parametrize("doc", _core_documents())
def test_core_manifests_validate_against_kubernetes_schemas(doc: dict[str, Any]) -> None:
    """Every core resource validates strictly (no unknown field) against the oldest and newest supported schemas."""
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


# The part of the Prometheus Operator CRDs (monitoring.coreos.com/v1) these manifests use.
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}},
}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": r"^\d+[smh]$"},
                            "scrapeTimeout": {"type": "string", "pattern": r"^\d+[smh]$"},
                        },
                    },
                },
            },
        },
    },
}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string"},
                            "rules": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "object",
                                    "required": ["alert", "expr", "for", "labels", "annotations"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {"type": "string", "pattern": "^Sipauth[A-Za-z]+$"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": {"type": "string", "pattern": r"^\d+[smh]$"},
                                        "labels": {
                                            "type": "object",
                                            "required": ["severity"],
                                            "properties": {"severity": {"enum": ["critical", "warning", "info"]}},
                                        },
                                        "annotations": {
                                            "type": "object",
                                            "required": ["summary", "description", "runbook_url"],
                                            "additionalProperties": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_only_prometheus_operator_kinds_are_outside_the_core_schemas() -> None:
    """Every manifest is either a core resource (schema-validated) or one of the two CRDs validated below."""
    kinds = {doc["kind"] for path in _manifest_files() for doc in load_documents(path)}
    assert kinds & CRD_KINDS == CRD_KINDS
    for kind in kinds - CRD_KINDS:
        assert not kind.startswith(("Service" + "Monitor", "Prometheus"))


def test_service_monitor_matches_its_crd_structure() -> None:
    """The ServiceMonitor has the structure of monitoring.coreos.com/v1 with only the fields used here."""
    jsonschema.validate(find(KUBERNETES, "ServiceMonitor"), SERVICE_MONITOR_SCHEMA)


def test_prometheus_rule_matches_its_crd_structure() -> None:
    """The PrometheusRule has the monitoring.coreos.com/v1 structure and every alert a severity and a runbook."""
    jsonschema.validate(find(KUBERNETES, "PrometheusRule"), PROMETHEUS_RULE_SCHEMA)


def _alert_rules() -> list[dict[str, Any]]:
    rule = find(KUBERNETES, "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda r: r["alert"])
def test_alert_expressions_use_only_exported_metrics(rule: dict[str, Any]) -> None:
    """Each alert expression reads only sipauth's exported series and labels those series carry."""
    used = usage(rule["expr"])
    allowed = allowed_series()
    assert used.series, "the expression reads no series"
    assert used.series <= set(allowed), f"unknown series: {used.series - set(allowed)}"
    for series, label in used.matchers:
        assert label in labels_of(series), f"{series} has no label {label}"
    known = set().union(*(labels_of(s) for s in used.series))
    assert used.grouping <= known, f"grouping by labels the series lack: {used.grouping - known}"
    assert rule["expr"].count("(") == rule["expr"].count(")")


def test_every_alert_has_a_section_in_the_operations_doc() -> None:
    """Each alert's runbook_url points at a heading of docs/operations.md named after the alert."""
    doc = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    headings = {line.lstrip("#").strip().lower() for line in doc.splitlines() if line.startswith("#")}
    names = [rule["alert"] for rule in _alert_rules()]
    assert len(names) == len(set(names))
    for rule in _alert_rules():
        assert rule["annotations"]["runbook_url"] == f"docs/operations.md#{rule['alert'].lower()}"
        assert rule["alert"].lower() in headings, f"docs/operations.md has no section {rule['alert']}"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: d.name)
def test_kustomization_lists_exactly_the_manifests_of_its_directory(directory: Path) -> None:
    """Every resource in kustomization.yaml exists and every manifest beside it is listed (bar the Secret example)."""
    kustomization = load_documents(directory / "kustomization.yaml")[0]
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    for resource in resources:
        assert (directory / resource).is_file(), f"{directory.name}/kustomization.yaml lists missing {resource}"
    present = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(resources) == present - NOT_APPLIED
    assert not NOT_APPLIED & set(resources)


def test_every_resource_name_is_unique_per_kind() -> None:
    """No two applied resources share a kind and name in the same kustomization."""
    for directory in KUSTOMIZATIONS:
        seen: set[tuple[str, str]] = set()
        for path in sorted(directory.glob("*.yaml")):
            if path.name == "kustomization.yaml":
                continue
            for doc in load_documents(path):
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in seen, f"{key} defined twice in {directory.name}"
                seen.add(key)


def test_kustomization_image_is_the_deployment_image() -> None:
    """The image the kustomization rewrites is the one the Deployment names."""
    kustomization = load_documents(KUBERNETES / "kustomization.yaml")[0]
    assert [image["name"] for image in kustomization["images"]] == [_container()["image"]]


def test_configmap_settings_are_valid_sipauth_settings() -> None:
    """The ConfigMap's sipauth.yaml passes sipauth's own validation and its Active Directory preset resolves."""
    settings = _settings()
    assert settings.listen == "0.0.0.0:50051"
    assert settings.metrics.listen == "0.0.0.0:9464"
    assert str(settings.nonce_keys_file) == "/etc/sipauth/secrets/nonce-keys"
    assert settings.redis.enabled
    assert settings.ldap is not None
    assert settings.ldap.preset == "active_directory"
    resolve_profile(settings.ldap)


def test_deployment_container_is_locked_down() -> None:
    """The pod runs non-root, read-only root filesystem, no capabilities, RuntimeDefault seccomp, with limits."""
    pod = _pod_spec()
    container = _container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert set(container["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])


def test_deployment_probes_are_native_grpc_on_the_served_port() -> None:
    """Liveness asks health service "liveness" and readiness "readiness", on the port sipauth listens on."""
    container = _container()
    _, port = parse_listen(_settings().listen)
    assert container["livenessProbe"]["grpc"] == {"port": port, "service": "liveness"}
    assert container["readinessProbe"]["grpc"] == {"port": port, "service": "readiness"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == port
    metrics = _settings().metrics.listen
    assert metrics is not None
    assert ports["metrics"] == parse_listen(metrics)[1]


def test_termination_grace_outlasts_prestop_and_drain() -> None:
    """terminationGracePeriodSeconds exceeds preStop sleep + shutdown_grace_seconds: the drain is never cut short."""
    pre_stop = _container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    budget = int(pre_stop[1]) + _settings().shutdown_grace_seconds
    assert _pod_spec()["terminationGracePeriodSeconds"] > budget


def test_config_and_secret_files_land_where_the_settings_read_them() -> None:
    """The projected volume puts sipauth.yaml and each Secret file at the paths the image and the settings read."""
    container = _container()
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/sipauth"]
    [volume] = [v for v in _pod_spec()["volumes"] if v["name"] == mount["name"]]
    paths: dict[str, tuple[str, str]] = {}
    for source in volume["projected"]["sources"]:
        kind = "configMap" if "configMap" in source else "secret"
        for item in source[kind]["items"]:
            paths[f"/etc/sipauth/{item['path']}"] = (kind, item["key"])
    assert paths["/etc/sipauth/sipauth.yaml"] == ("configMap", "sipauth.yaml")
    settings = _settings()
    assert settings.ldap is not None
    for needed in (settings.nonce_keys_file, settings.ldap.ca_file):
        assert str(needed) in paths, f"{needed} is not mounted"
    secret_keys = _secret_keys()
    for kind, key in paths.values():
        if kind == "secret":
            assert key in secret_keys, f"the Secret example has no key {key}"
    configmap = find(KUBERNETES, "ConfigMap", "sipauth")
    assert {key for kind, key in paths.values() if kind == "configMap"} <= set(configmap["data"])


def test_environment_comes_from_the_secret_keys_the_example_documents() -> None:
    """Each env variable read from the Secret names a key that the Secret example has or documents as optional."""
    secret_text = (KUBERNETES / "secret.example.yaml").read_text(encoding="utf-8")
    for env in _container()["env"]:
        assert env["name"].startswith("SIPAUTH_")
        ref = env["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "sipauth"
        if ref.get("optional"):
            assert ref["key"] in secret_text
        else:
            assert ref["key"] in _secret_keys()


def test_secret_example_is_obviously_an_example() -> None:
    """Every value in the Secret example says it is an example, so none can pass for a real secret."""
    secret = find(KUBERNETES, "Secret", "sipauth")
    for key, value in secret["stringData"].items():
        assert "EXAMPLE-ONLY" in value, f"{key} does not look like an example value"


def test_services_select_the_deployment_pods_and_its_named_ports() -> None:
    """Both Services select the Deployment's pods by its labels and target ports the container declares."""
    labels = find(KUBERNETES, "Deployment", "sipauth")["spec"]["template"]["metadata"]["labels"]
    container_ports = {p["name"] for p in _container()["ports"]}
    for name in ("sipauth", "sipauth-headless"):
        service = find(KUBERNETES, "Service", name)
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports
    assert find(KUBERNETES, "Service", "sipauth-headless")["spec"]["clusterIP"] == "None"
    assert find(KUBERNETES, "Service", "sipauth")["spec"]["type"] == "ClusterIP"


def test_service_monitor_scrapes_one_service_by_its_metrics_port() -> None:
    """The ServiceMonitor's selector matches exactly one Service, and that one has the port it scrapes."""
    monitor = find(KUBERNETES, "ServiceMonitor")
    wanted = monitor["spec"]["selector"]["matchLabels"].items()
    services = [
        doc
        for path in sorted(KUBERNETES.glob("service*.yaml"))
        for doc in load_documents(path)
        if wanted <= doc["metadata"]["labels"].items()
    ]
    assert len(services) == 1
    names = {p["name"] for p in services[0]["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= names


def test_autoscaler_and_budget_target_the_deployment() -> None:
    """The HPA scales the Deployment on CPU from at least its replica count, and the PDB covers its pods."""
    deployment = find(KUBERNETES, "Deployment", "sipauth")
    hpa = find(KUBERNETES, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sipauth"}
    assert hpa["spec"]["minReplicas"] >= deployment["spec"]["replicas"] == 3
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    pdb = find(KUBERNETES, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_network_policy_opens_exactly_the_documented_ports() -> None:
    """Ingress: 50051 and 50052 from labelled proxy pods, 9464 from monitoring; egress: Redis, Sentinel, LDAP, DNS."""
    policy = find(KUBERNETES, "NetworkPolicy")
    deployment = find(KUBERNETES, "Deployment", "sipauth")
    assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ingress = {tuple(p["port"] for p in rule["ports"]): rule["from"] for rule in policy["spec"]["ingress"]}
    assert set(ingress) == {(50051, 50052), (9464,)}
    assert all("podSelector" in peer for peer in ingress[(50051, 50052)])
    assert ingress[(9464,)] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    egress = {(p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    expected = {(6379, "TCP"), (26379, "TCP"), (389, "TCP"), (636, "TCP"), (53, "UDP"), (53, "TCP")}
    assert egress == expected


def test_settings_point_at_the_sentinel_example() -> None:
    """The ConfigMap's Sentinel addresses and master name are those the redis-sentinel StatefulSet provides."""
    redis = _settings().redis
    statefulset = find(SENTINEL, "StatefulSet")
    service = statefulset["spec"]["serviceName"]
    replicas = statefulset["spec"]["replicas"]
    expected = [f"{statefulset['metadata']['name']}-{i}.{service}:26379" for i in range(replicas)]
    assert redis.mode == "sentinel"
    assert redis.sentinels == expected
    scripts = find(SENTINEL, "ConfigMap")["data"]
    assert f"sentinel monitor {redis.master_name} " in scripts["sentinel.sh"]
    headless = find(SENTINEL, "Service", service)
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True


def test_sentinel_pods_run_the_scripts_they_mount() -> None:
    """Each StatefulSet container runs a script that the mounted ConfigMap holds."""
    statefulset = find(SENTINEL, "StatefulSet")
    scripts = find(SENTINEL, "ConfigMap")
    pod = statefulset["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in pod["containers"]:
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        script = container["command"][-1]
        directory, name = script.rsplit("/", 1)
        assert volumes[mounts[directory]]["configMap"]["name"] == scripts["metadata"]["name"]
        assert name in scripts["data"]
        for other in re.findall(r"/scripts/([\w.-]+)", scripts["data"][name]):
            assert other in scripts["data"]


def test_metric_catalogue_has_no_target_label_clash() -> None:
    """No exported metric uses a label name that Prometheus reserves for the scrape target."""
    for labels in METRICS.values():
        assert not labels & TARGET_LABELS
