"""The `llmchain` entry point: subcommands exist, and those whose work is not built yet say so."""

from __future__ import annotations

from typing import get_args

from click.testing import CliRunner

from llmchain_cli.main import cli
from llmchain_operator.api import ModelSpec
from llmchain_server.model.accuracy import PLANS


def test_help_lists_every_subcommand() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("operator", "serve", "render", "crd", "model"):
        assert name in result.output


def test_serve_names_a_folder_that_is_not_a_model() -> None:
    result = CliRunner().invoke(cli, ["serve", "--model", "/nonexistent-model", "--port", "1"])
    assert result.exit_code == 1
    assert "/nonexistent-model has no valid manifest.json" in result.output


def test_model_build_names_a_missing_source() -> None:
    result = CliRunner().invoke(
        cli, ["model", "build", "--source", "/nonexistent.gguf", "--out", "/tmp/x-never"]
    )
    assert result.exit_code == 1
    assert "source /nonexistent.gguf does not exist" in result.output


def test_model_build_refuses_an_unknown_quantization() -> None:
    result = CliRunner().invoke(
        cli, ["model", "build", "--source", "a", "--out", "b", "--quantization", "int3"]
    )
    assert result.exit_code == 2
    assert "int3" in result.output


def test_accuracy_plans_agree_between_the_builder_the_cli_and_the_api() -> None:
    """The plan names live in model/accuracy.py; the CLI (which must not import the model
    package) and the operator's API (which may import only the chain schema) repeat them."""
    build = next(c for c in cli.commands["model"].commands["build"].params if c.name == "accuracy")
    api = ModelSpec.model_fields["accuracy"].annotation
    assert list(build.type.choices) == list(PLANS) == list(get_args(api))
    assert build.default == ModelSpec.model_fields["accuracy"].default == "recommended"


def test_model_build_refuses_an_unknown_accuracy_plan() -> None:
    result = CliRunner().invoke(
        cli, ["model", "build", "--source", "a", "--out", "b", "--accuracy", "int2"]
    )
    assert result.exit_code == 2
    assert "int2" in result.output
