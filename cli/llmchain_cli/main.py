"""Subcommands of `llmchain`. Each imports its implementation lazily, so `llmchain serve` does
not load the operator's dependencies and `llmchain operator` does not load onnxruntime."""

import logging
import sys
from typing import NoReturn, TextIO

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


@cli.command()
@click.option(
    "-n",
    "--namespace",
    "namespaces",
    multiple=True,
    help="Watch only this namespace (repeatable); default: the whole cluster.",
)
@click.option("--metrics-port", default=8080, show_default=True, help="Port of /metrics.")
@click.option("--liveness-port", default=8081, show_default=True, help="Port of /healthz.")
@click.option("--verbose", is_flag=True, help="Log debug details.")
def operator(
    namespaces: tuple[str, ...], metrics_port: int, liveness_port: int, verbose: bool
) -> None:
    """Run the operator that reconciles LLMChainApp resources."""
    import kopf

    import llmchain_operator.main  # noqa: F401  (registers the handlers)
    from llmchain_operator import metrics

    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON)
    if not verbose:  # one line per handled event is noise at this scale
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    metrics.serve(metrics_port)
    kopf.run(
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        standalone=True,
        liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz",
    )


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def serve() -> None:
    """Serve a model and chain over HTTP (runs inside the model-server pods)."""
    _not_yet("the chain server", 5)


@cli.command()
@click.argument("file", type=click.File("r"))
@click.option("-n", "--namespace", help="Namespace of apps that name none (default: default).")
@click.option(
    "--without-api",
    "missing",
    multiple=True,
    type=click.Choice(["monitoring.coreos.com", "keda.sh"]),
    help="Render as for a cluster without this optional API group (repeatable).",
)
def render(file: TextIO, namespace: str | None, missing: tuple[str, ...]) -> None:
    """Print the child manifests the operator would apply for the LLMChainApps in FILE.

    Offline, without a cluster, like `helm template`: review them in a GitOps pull request.
    FILE may hold several YAML documents; `-` reads standard input.
    """
    from llmchain_operator.builders import OPTIONAL_API_GROUPS
    from llmchain_operator.render import RenderError
    from llmchain_operator.render import render as render_text
    from llmchain_operator.settings import Settings

    groups = [g for g in OPTIONAL_API_GROUPS if g not in missing]
    try:
        click.echo(
            render_text(
                file.read(), Settings.from_env(), namespace=namespace, available_groups=groups
            ),
            nl=False,
        )
    except RenderError as error:
        raise click.ClickException(str(error)) from None


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
