"""The operator-server agreement (llmchain_server.contract): what the operator renders into pods
is what the server's command line takes, and the build recipe is part of the model digest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from llmchain_cli.main import cli
from llmchain_operator.builders import build_children
from llmchain_operator.builders.common import model_digest
from llmchain_operator.settings import Settings
from llmchain_server import contract
from llmchain_server.config import ChainConfig
from llmchain_server.model import manifest
from tests.unit.test_builders import GPU, QA, app

APPS = {
    "gpu-keda-memory": app(GPU),
    "build-job": app(QA, model__volume={"size": "2Gi"}),
    "init-build": app(QA),
}


def containers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for obj in objects:
        spec = obj.get("spec", {}).get("template", {}).get("spec", {})
        found += spec.get("initContainers", []) + spec.get("containers", [])
    return found


def subcommand(args: list[str]) -> click.Command:
    command: click.Command = cli
    for word in args[1:]:
        if not isinstance(command, click.Group) or word not in command.commands:
            break
        command = command.commands[word]
    return command


@pytest.mark.parametrize("name", APPS)
def test_every_flag_the_operator_renders_is_one_the_cli_takes(name: str) -> None:
    ran = 0
    for container in containers(build_children(APPS[name], Settings()).objects):
        args = container.get("args", [])
        if not args or args[0] != contract.COMMAND:
            continue
        command = subcommand(args)
        taken = {opt for param in command.params for opt in getattr(param, "opts", [])}
        flags = {a for a in args if a.startswith("--")}
        assert flags <= taken, f"{container['name']}: {sorted(flags - taken)} not taken"
        ran += 1
    assert ran, "no container runs the llmchain command"


@pytest.mark.parametrize("name", APPS)
def test_every_variable_the_operator_sets_is_a_contract_name(name: str) -> None:
    names = {v for k, v in vars(contract).items() if k.startswith("ENV_")}
    for container in containers(build_children(APPS[name], Settings()).objects):
        if container.get("args", [""])[0] != contract.COMMAND:
            continue
        for variable in container.get("env", []):
            assert variable["name"] in names | {"HOME"}, variable["name"]


def test_the_chain_configmap_is_what_the_server_reads() -> None:
    for obj in build_children(APPS["gpu-keda-memory"], Settings()).objects:
        if obj["kind"] == "ConfigMap" and contract.CHAIN_FILE in obj.get("data", {}):
            config = ChainConfig.model_validate(yaml.safe_load(obj["data"][contract.CHAIN_FILE]))
            assert config.chain.memory is not None  # store and its Secret stay operator-side
            return
    raise AssertionError("no chain ConfigMap")


def test_a_new_builder_version_changes_the_model_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    before = model_digest(app(QA))
    monkeypatch.setattr(contract, "MODEL_BUILD_RECIPE", "llmchain-model-build/999")
    assert model_digest(app(QA)) != before


def test_the_builder_records_the_contract_recipe(tmp_path: Path) -> None:
    """The recipe a model folder's manifest records is the one the operator digests."""
    (tmp_path / "model.onnx").write_bytes(b"graph")
    written = manifest.write_manifest(
        tmp_path, source={"uri": "test"}, quantization="int8", build_digest=None, parameters=1
    )
    recorded = json.loads((tmp_path / manifest.MANIFEST).read_text())
    assert written["builder"] == recorded["builder"] == contract.MODEL_BUILD_RECIPE


def test_the_server_reads_what_the_operator_sets() -> None:
    """The server container's literal variables, read back by the server's own settings."""
    from llmchain_server.dataplane.settings import ServerSettings
    from llmchain_server.engine import EngineSettings

    application = app(
        QA,
        serving={"maxConcurrency": 17, "maxBatchSize": 5, "terminationGracePeriodSeconds": 90},
        cache={"ttlSeconds": 123, "includeSampled": True},
        model__executionProvider="cpu",
    )
    server = next(
        c
        for c in containers(build_children(application, Settings()).objects)
        if c["name"] == "server"
    )
    env = {v["name"]: v["value"] for v in server["env"] if "value" in v}
    settings = ServerSettings.from_env("folder-name", env)
    assert (settings.model_name, settings.max_concurrency) == ("qa-chain", 17)
    assert (settings.cache_ttl_seconds, settings.cache_sampled) == (123, True)
    assert settings.grace_seconds == 90 - 5 - 5  # less the preStop pause and a margin
    engine = EngineSettings.from_env(env)
    assert (engine.provider, engine.max_batch) == ("cpu", 5)


def test_the_server_reads_past_what_older_operators_wrote_about_the_memory_store() -> None:
    older = {
        "name": "support-chat",
        "chain": {
            "inputs": ["message"],
            "steps": [{"name": "reply", "prompt": "{{ message }}"}],
            "memory": {"window": 3, "store": "external", "redisUrlSecretRef": {"name": "r"}},
        },
    }
    memory = ChainConfig.model_validate(older).chain.memory
    assert memory is not None and memory.window == 3
    # The operator's own Memory keeps and checks them.
    application = app(GPU, chain__memory={"store": "managed", "window": 2})
    assert application.spec.chain.memory is not None
    assert application.spec.chain.memory.store == "managed"
