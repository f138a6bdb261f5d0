"""Pure builders: golden manifests per example, and one focused test per rule."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmchain_operator.api import LLMChainApp
from llmchain_operator.builders import build_children
from llmchain_operator.builders.common import model_digest
from llmchain_operator.builders.workload import build_deployment
from llmchain_operator.render import render
from llmchain_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*/app.yaml"))
GOLDEN = Path(__file__).parent / "golden"
SETTINGS = Settings()
QA: dict[str, Any] = yaml.safe_load((ROOT / "examples/01-qa-chain/app.yaml").read_text())
GPU: dict[str, Any] = yaml.safe_load((ROOT / "examples/02-gpu-autoscaled/app.yaml").read_text())


def app(raw: dict[str, Any], **spec_changes: Any) -> LLMChainApp:
    raw = copy.deepcopy(raw)
    raw["metadata"]["namespace"] = "apps"
    for dotted, value in spec_changes.items():
        node = raw["spec"]
        *parents, last = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return LLMChainApp.model_validate(raw)


def objects(application: LLMChainApp) -> dict[str, dict[str, Any]]:
    return {
        f"{o['kind']}/{o['metadata']['name']}": o
        for o in build_children(application, SETTINGS).objects
    }


def pod_spec(application: LLMChainApp) -> dict[str, Any]:
    spec: dict[str, Any] = build_deployment(application, SETTINGS)["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_rendered_example_matches_its_golden_file(path: Path) -> None:
    rendered = render(path.read_text(), SETTINGS, namespace="apps")
    golden = GOLDEN / f"{path.parent.name}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(rendered)
    assert rendered == golden.read_text(), f"run UPDATE_GOLDEN=1 pytest {__file__}"


def test_building_twice_gives_identical_objects() -> None:
    assert build_children(app(GPU), SETTINGS) == build_children(app(GPU), SETTINGS)


def test_every_object_is_labelled_and_namespaced() -> None:
    for obj in build_children(app(GPU), SETTINGS).objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "llmchain-operator"
        assert labels["app.kubernetes.io/instance"] == "support-chat"
        assert obj["metadata"]["namespace"] == "apps"


def test_every_container_passes_the_restricted_pod_security_standard() -> None:
    for obj in build_children(app(GPU), SETTINGS).objects:
        template = obj.get("spec", {}).get("template")
        if not template:
            continue
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in spec.get("initContainers", []) + spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}


def test_a_chain_change_rolls_the_pods_and_a_replica_change_does_not() -> None:
    def chain_hash(application: LLMChainApp) -> str:
        deployment = build_deployment(application, SETTINGS)
        value: str = deployment["spec"]["template"]["metadata"]["annotations"][
            "llmchain.io/chain-hash"
        ]
        return value

    base = chain_hash(app(QA))
    changed = copy.deepcopy(QA)
    changed["spec"]["chain"]["steps"][0]["prompt"] = "Q: {{ question }}\nA:"
    assert chain_hash(app(changed)) != base
    assert chain_hash(app(QA, serving={"replicas": 3})) == base


def test_gpus_add_the_limit_the_toleration_and_a_surge_free_rollout() -> None:
    deployment = build_deployment(app(GPU), SETTINGS)
    spec = deployment["spec"]["template"]["spec"]
    server = spec["containers"][0]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert server["image"] == SETTINGS.server_gpu_image


def test_cpu_apps_surge_one_pod_and_keep_all_available() -> None:
    deployment = build_deployment(app(QA), SETTINGS)
    spec = deployment["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in str(spec["containers"][0]["resources"])
    assert "tolerations" not in spec
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_the_gpu_rollout_is_configurable() -> None:
    deployment = build_deployment(app(GPU, serving__rollout={"maxSurge": 1}), SETTINGS)
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 1


def test_replicas_are_left_to_the_autoscaler() -> None:
    assert "replicas" not in build_deployment(app(GPU), SETTINGS)["spec"]
    assert build_deployment(app(QA, serving={"replicas": 3}), SETTINGS)["spec"]["replicas"] == 3


def test_autoscalers_target_the_deployment() -> None:
    keda = objects(app(GPU))["ScaledObject/support-chat"]
    assert keda["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "support-chat",
    }
    hpa_app = app(QA, autoscaling={"minReplicas": 2, "maxReplicas": 5})
    hpa = objects(hpa_app)["HorizontalPodAutoscaler/qa-chain"]
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)


def test_a_volume_builds_the_model_once_in_a_job() -> None:
    children = objects(app(GPU))
    jobs = [o for key, o in children.items() if key.startswith("Job/")]
    assert len(jobs) == 1
    assert "PersistentVolumeClaim/support-chat-model" in children
    spec = pod_spec(app(GPU))
    init = {c["name"]: c for c in spec["initContainers"]}
    assert init["model"]["args"][:3] == ["llmchain", "model", "wait"]
    models = next(v for v in spec["volumes"] if v["name"] == "models")
    assert models["persistentVolumeClaim"] == {"claimName": "support-chat-model", "readOnly": True}


def test_without_a_volume_each_pod_builds_into_an_empty_dir() -> None:
    spec = pod_spec(app(QA))
    assert not any(key.startswith("Job/") for key in objects(app(QA)))
    build = next(c for c in spec["initContainers"] if c["name"] == "model")
    assert build["args"][:5] == [
        "llmchain",
        "model",
        "build",
        "--source",
        QA["spec"]["model"]["source"]["url"]["url"],
    ]
    models = next(v for v in spec["volumes"] if v["name"] == "models")
    assert models == {"name": "models", "emptyDir": {}}


def test_a_built_onnx_folder_is_mounted_without_any_build() -> None:
    onnx = app(QA, model__source={"onnx": {"claimName": "models", "path": "/smollm2"}})
    spec = pod_spec(onnx)
    assert [c["name"] for c in spec["initContainers"]] == ["cache"]
    server = spec["containers"][0]
    assert server["args"][server["args"].index("--model") + 1] == "/models/smollm2"


def test_the_cache_is_a_native_sidecar_the_server_uses() -> None:
    spec = pod_spec(app(QA))
    cache = spec["initContainers"][0]
    assert cache["name"] == "cache" and cache["restartPolicy"] == "Always"
    assert "256mb" in cache["args"]
    assert "--redis-url" in spec["containers"][0]["args"]
    no_cache = pod_spec(app(QA, cache={"enabled": False}))
    assert "--redis-url" not in no_cache["containers"][0]["args"]
    assert all(c["name"] != "cache" for c in no_cache["initContainers"])


def test_model_digest_is_deterministic_and_follows_what_changes_the_bytes() -> None:
    digest = model_digest(app(QA))
    assert digest.startswith("sha256:") and digest == model_digest(app(QA))
    assert model_digest(app(QA, model__quantization="int4")) != digest
    assert model_digest(app(QA, model__accuracy="int8")) != digest  # QA is an int8 build
    fp16 = app(QA, model__quantization="fp16")
    assert model_digest(app(QA, model__quantization="fp16", model__accuracy="exact")) == (
        model_digest(fp16)
    )
    assert model_digest(app(QA, model__executionProvider="cpu")) == digest
    other = copy.deepcopy(QA)
    other["metadata"]["name"] = "another-app"
    assert model_digest(app(other)) == digest


def test_managed_memory_gets_a_store_and_its_url() -> None:
    children = objects(app(GPU))
    assert "Deployment/support-chat-memory" in children
    assert "Service/support-chat-memory" in children
    env = {e["name"]: e for e in pod_spec(app(GPU))["containers"][0]["env"]}
    assert env["LLMCHAIN_MEMORY_URL"]["value"] == "redis://support-chat-memory.apps.svc:6379/0"


def test_external_memory_comes_from_a_secret() -> None:
    external = app(
        GPU,
        chain__memory={"store": "external", "redisUrlSecretRef": {"name": "redis", "key": "url"}},
    )
    assert "Deployment/support-chat-memory" not in objects(external)
    env = {e["name"]: e for e in pod_spec(external)["containers"][0]["env"]}
    assert env["LLMCHAIN_MEMORY_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "redis", "key": "url"}
    }


def test_the_api_key_is_mounted_from_its_secret_not_put_in_env() -> None:
    spec = pod_spec(app(GPU))
    secret = next(v for v in spec["volumes"] if v["name"] == "api-key")
    assert secret["secret"]["secretName"] == "support-keys"
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert env["LLMCHAIN_API_KEY_FILE"]["value"] == "/etc/llmchain/api-key/key"


def test_missing_optional_apis_are_skipped_not_built() -> None:
    children = build_children(app(GPU), SETTINGS, available_groups=[])
    kinds = {o["kind"] for o in children.skipped}
    assert kinds == {"ScaledObject", "ServiceMonitor", "PrometheusRule"}
    assert not any(o["kind"] in kinds for o in children.objects)


def test_monitoring_can_be_switched_off() -> None:
    edge = yaml.safe_load((ROOT / "examples/03-edge-cpu/app.yaml").read_text())
    kinds = {o["kind"] for o in build_children(app(edge), SETTINGS).objects}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}
    assert "ConfigMap" in kinds  # the chain, not a dashboard
    names = [k for k in objects(app(edge)) if k.startswith("ConfigMap/")]
    assert names == ["ConfigMap/edge-summarizer-chain"]


def test_alert_thresholds_come_from_the_spec() -> None:
    rule = objects(app(GPU))["PrometheusRule/support-chat"]
    exprs = {r["alert"]: r["expr"] for r in rule["spec"]["groups"][0]["rules"]}
    assert exprs["LLMChainHighLatency"].endswith("> 4")
    assert exprs["LLMChainHighErrorRate"].endswith("> 0.02")
    assert exprs["LLMChainLowCacheHitRate"].endswith("< 0.1")


def test_alerts_hold_for_their_defaults_or_the_specs_for_duration() -> None:
    def pending(application: LLMChainApp) -> dict[str, str]:
        rule = objects(application)["PrometheusRule/support-chat"]
        return {r["alert"]: r["for"] for r in rule["spec"]["groups"][0]["rules"]}

    assert pending(app(GPU)) == {
        "LLMChainAppDown": "5m",
        "LLMChainHighLatency": "10m",
        "LLMChainHighErrorRate": "10m",
        "LLMChainLowCacheHitRate": "30m",
    }
    short = app(GPU, monitoring__alerts__forDuration="45s")
    assert set(pending(short).values()) == {"45s"}


def test_probes_and_scrapes_are_not_counted_as_requests_and_unready_pods_not_scraped() -> None:
    gpu = objects(app(GPU))
    rule = gpu["PrometheusRule/support-chat"]
    exprs = {r["alert"]: r["expr"] for r in rule["spec"]["groups"][0]["rules"]}
    for alert in ("LLMChainHighLatency", "LLMChainHighErrorRate"):
        assert exprs[alert].count('route!~"/healthz|/readyz|/metrics"') >= 1, alert
    (endpoint,) = gpu["ServiceMonitor/support-chat"]["spec"]["endpoints"]
    (drop,) = endpoint["relabelings"]
    assert drop["action"] == "drop" and drop["regex"] == ".*false.*"
    assert "__meta_kubernetes_endpointslice_endpoint_conditions_ready" in drop["sourceLabels"]


def test_pdb_never_blocks_a_drain_of_a_single_replica() -> None:
    pdb = objects(app(QA))["PodDisruptionBudget/qa-chain"]
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]


def test_hash_values_never_read_as_numbers_in_yaml() -> None:
    # Hex hashes can be all digits (or digits with one "e"); kubectl would read those as
    # numbers and reject the object, so every hash value carries a prefix.
    gpu = objects(app(GPU))
    pod_annotations = gpu["Deployment/support-chat"]["spec"]["template"]["metadata"]["annotations"]
    assert pod_annotations["llmchain.io/chain-hash"].startswith("sha256:")
    assert pod_annotations["llmchain.io/model-digest"].startswith("sha256:")
    job = next(o for k, o in gpu.items() if k.startswith("Job/"))
    assert job["metadata"]["labels"]["llmchain.io/model-digest"].startswith("sha256-")


def test_quantities_are_read_as_kubernetes_reads_them() -> None:
    from llmchain_operator.api import quantity_bytes

    assert quantity_bytes("1Gi") == 2**30
    assert quantity_bytes("80Mi") == 80 * 2**20
    assert quantity_bytes("1.5G") == 1.5e9
    assert quantity_bytes("500m") == 0.5
    assert quantity_bytes("2") == 2


def test_the_model_build_gets_room_above_a_small_server_memory_limit() -> None:
    """Building peaks at 1.5-1.7 GiB (measured): a 1Gi server limit would OOM-kill it."""
    small = app(QA, serving__resources={"limits": {"memory": "1Gi"}})
    build = next(c for c in pod_spec(small)["initContainers"] if c["name"] == "model")
    assert build["resources"]["limits"] == {"memory": "2Gi"}
    large = app(QA, serving__resources={"limits": {"memory": "3Gi"}})
    build = next(c for c in pod_spec(large)["initContainers"] if c["name"] == "model")
    assert build["resources"]["limits"] == {"memory": "3Gi"}
    no_limits = app(QA, serving__resources={"requests": {"cpu": "1"}})
    unlimited = next(c for c in pod_spec(no_limits)["initContainers"] if c["name"] == "model")
    assert "limits" not in unlimited["resources"]


def test_the_build_job_caps_the_download_at_the_model_volume_size() -> None:
    """The build Job downloads at most the model volume's size (#12 item 17)."""
    job = next(
        o
        for k, o in objects(app(GPU, model__volume={"size": "3Gi"})).items()
        if k.startswith("Job/")
    )
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--max-source-bytes") + 1] == str(3 * 2**30)
    build = next(c for c in pod_spec(app(QA))["initContainers"] if c["name"] == "model")
    assert "--max-source-bytes" not in build["args"]  # no volume: the CLI's default cap


def test_a_limit_below_the_default_request_lowers_the_request_to_it() -> None:
    """The API server rejects a request above its limit (#12 item 1): a default request must
    not exceed a limit the user set without a request."""
    small = app(QA, serving__resources={"limits": {"cpu": "500m", "memory": "512Mi"}})
    server = build_deployment(small, SETTINGS)["spec"]["template"]["spec"]["containers"][0]
    assert server["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi"},
        "limits": {"cpu": "500m", "memory": "512Mi"},
    }
    large = app(QA, serving__resources={"limits": {"cpu": "4"}, "requests": {"memory": "2Gi"}})
    server = build_deployment(large, SETTINGS)["spec"]["template"]["spec"]["containers"][0]
    assert server["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
