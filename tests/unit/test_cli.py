"""The `llmchain` entry point: subcommands exist, and those whose work is not built yet say so."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from llmchain_cli.main import cli


def test_help_lists_every_subcommand() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("operator", "serve", "render", "crd", "model"):
        assert name in result.output


@pytest.mark.parametrize(
    ("args", "issue"),
    [
        (["model", "build", "--quantization", "int8"], 4),
        (["serve", "--model", "m", "--port", "8000"], 5),
    ],
)
def test_unbuilt_subcommands_fail_and_name_their_issue(args: list[str], issue: int) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "not implemented yet" in result.output
    assert f"issue #{issue}" in result.output
