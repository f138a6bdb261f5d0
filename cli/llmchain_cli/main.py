"""Subcommands of `llmchain`. Each imports its implementation lazily, so `llmchain serve` does
not load the operator's dependencies and `llmchain operator` does not load onnxruntime."""

import sys
from typing import NoReturn

import click


def _not_yet(what: str, issue: int) -> NoReturn:
    click.echo(
        f"llmchain: {what} is not implemented yet (it arrives with issue #{issue}).", err=True
    )
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llmchain-operator")
def cli() -> None:
    """Run and manage LLM chain apps on Kubernetes."""


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def operator() -> None:
    """Run the operator that reconciles LLMChainApp resources."""
    _not_yet("the operator", 3)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def serve() -> None:
    """Serve a model and chain over HTTP (runs inside the model-server pods)."""
    _not_yet("the chain server", 5)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def render() -> None:
    """Print the child manifests the operator would apply for the LLMChainApps in a file."""
    _not_yet("rendering manifests", 3)


@cli.command()
def crd() -> None:
    """Print the LLMChainApp CustomResourceDefinition generated from the API models."""
    from llmchain_operator.crd import render_crd_yaml

    click.echo(render_crd_yaml(), nl=False)


@cli.group()
def model() -> None:
    """Build and fetch quantized ONNX models."""


@model.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def build() -> None:
    """Build a quantized ONNX model folder from a GGUF, Hugging Face or ONNX source."""
    _not_yet("the model build", 4)


def main() -> None:
    cli()
