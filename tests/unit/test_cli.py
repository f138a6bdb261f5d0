"""The `llmchain` entry point: subcommands exist, and those whose work is not built yet say so."""

from __future__ import annotations

from click.testing import CliRunner

from llmchain_cli.main import cli


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
