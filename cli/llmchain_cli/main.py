"""Subcommands of `llmchain`. Each imports its implementation lazily, so `llmchain serve` does
not load the operator's dependencies and `llmchain operator` does not load onnxruntime."""

import json
import signal
import sys
from pathlib import Path
from typing import TextIO

import click


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
@click.option(
    "--leader-election/--no-leader-election",
    default=True,
    show_default=True,
    help="Act only while holding the Lease (run several replicas for HA).",
)
@click.option(
    "--lease-namespace",
    envvar="POD_NAMESPACE",
    default="llmchain-system",
    show_default=True,
    help="Namespace of the leader Lease.",
)
@click.option(
    "--webhook-port",
    default=0,
    show_default=True,
    help="Serve the validating admission webhook on this port (0: no webhook).",
)
@click.option("--webhook-host", default="", help="Host name the API server uses to reach it.")
@click.option(
    "--webhook-cert-dir",
    default="/etc/llmchain/webhook",
    show_default=True,
    help="Folder with tls.crt, tls.key and ca.crt for the webhook.",
)
@click.option("--verbose", is_flag=True, help="Log debug details.")
def operator(
    namespaces: tuple[str, ...],
    metrics_port: int,
    liveness_port: int,
    leader_election: bool,
    lease_namespace: str,
    webhook_port: int,
    webhook_host: str,
    webhook_cert_dir: str,
    verbose: bool,
) -> None:
    """Run the operator that reconciles LLMChainApp resources."""
    from llmchain_operator.run import StartError, run_operator

    try:
        code = run_operator(
            namespaces=list(namespaces),
            metrics_port=metrics_port,
            liveness_port=liveness_port,
            leader_election=leader_election,
            lease_namespace=lease_namespace,
            verbose=verbose,
            webhook_port=webhook_port,
            webhook_host=webhook_host,
            webhook_cert_dir=webhook_cert_dir,
        )
    except StartError as error:
        raise click.ClickException(str(error)) from None
    sys.exit(code)


@cli.command()
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Model folder (from `llmchain model build`).",
)
@click.option(
    "--chain",
    "chain_file",
    type=click.Path(path_type=Path),
    help="Chain config: serves /v1/chains/<name>/invoke|batch|stream.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option(
    "--redis-url", help="The per-pod cache's Redis (also the memory store without --memory-url)."
)
@click.option("--memory-url", help="The Redis all replicas share for conversation memory.")
@click.option("--model-name", help="Model id clients send (default: the folder's name).")
@click.option(
    "--embedding-model",
    "embedding_dir",
    type=click.Path(path_type=Path),
    help="An embedding model folder (`llmchain model build` from a sentence-transformers "
    "model): serves /v1/embeddings.",
)
@click.option(
    "--embedding-model-name", help="Embedding model id clients send (default: its folder's name)."
)
@click.option(
    "--index",
    "index_dir",
    type=click.Path(path_type=Path),
    help="A document index (`llmchain index build`) for the chain's retrieval steps; built with "
    "--embedding-model.",
)
@click.option(
    "--log-format", type=click.Choice(["json", "text"]), default="json", show_default=True
)
@click.option("--log-level", default="INFO", show_default=True)
def serve(
    model_dir: Path,
    chain_file: Path | None,
    host: str,
    port: int,
    redis_url: str | None,
    memory_url: str | None,
    model_name: str | None,
    embedding_dir: Path | None,
    embedding_model_name: str | None,
    index_dir: Path | None,
    log_format: str,
    log_level: str,
) -> None:
    """Serve a model over HTTP: OpenAI-compatible endpoints (runs inside the model-server pods)."""

    from llmchain_server.http import logs

    logs.configure(log_format, log_level.upper())
    from llmchain_server.serve import run

    try:
        sys.exit(
            run(
                model_dir,
                host,
                port,
                model_name,
                chain_file,
                redis_url,
                memory_url,
                embedding_dir,
                embedding_model_name,
                index_dir,
            )
        )
    except ValueError as e:  # an unverifiable model folder names its problem
        raise click.ClickException(str(e)) from None


@cli.command()
@click.argument("file", type=click.File("r"))
@click.option("-n", "--namespace", help="Namespace of apps that name none (default: default).")
@click.option(
    "--without-api",
    "missing",
    multiple=True,
    type=click.Choice(["monitoring.coreos.com", "keda.sh"]),  # kinds.OPTIONAL_API_GROUPS (tested)
    help="Render as for a cluster without this optional API group (repeatable).",
)
def render(file: TextIO, namespace: str | None, missing: tuple[str, ...]) -> None:
    """Print the child manifests the operator would apply for the LLMChainApps in FILE.

    Offline, without a cluster, like `helm template`: review them in a GitOps pull request.
    FILE may hold several YAML documents; `-` reads standard input.
    """
    from llmchain_operator.kinds import OPTIONAL_API_GROUPS
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


@cli.command("rule-tests")
@click.argument("file", type=click.File("r"))
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write the rule and test files into (created if missing).",
)
@click.option("-n", "--namespace", help="Namespace of apps that name none (default: default).")
def rule_tests(file: TextIO, out: Path, namespace: str | None) -> None:
    """Write, per LLMChainApp in FILE, its alert rules and a `promtool test rules` file in which
    each alert fires on synthetic series and stays quiet on others.

    Run them with `promtool test rules OUT/*.test.yaml`: after changing thresholds or `for`, the
    tests say whether each alert still fires when it should.
    """
    from llmchain_operator.render import RenderError, rule_test_files

    try:
        files = rule_test_files(file.read(), namespace=namespace)
    except RenderError as error:
        raise click.ClickException(str(error)) from None
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
        click.echo(out / name)


@cli.command()
def crd() -> None:
    """Print the LLMChainApp CustomResourceDefinition generated from the API models."""
    from llmchain_operator.crd import render_crd_yaml

    click.echo(render_crd_yaml(), nl=False)


@cli.group()
def model() -> None:
    """Build and fetch quantized ONNX models."""


def _size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    from llmchain_server.model.fetch import parse_size

    try:
        return None if value is None else parse_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@model.command()
@click.option(
    "--source", required=True, help="GGUF file or URL, Hugging Face folder, or ONNX folder."
)
@click.option("--sha256", help="Expected sha256 of the source file (checked before use).")
@click.option(
    "--max-source-bytes",
    envvar="LLMCHAIN_MAX_SOURCE_BYTES",  # contract.ENV_MAX_SOURCE_BYTES, not imported
    show_envvar=True,
    callback=_size,
    help="Most bytes to download from a URL source, e.g. 2Gi: a larger Content-Length is "
    "refused before reading, a longer body cut off. Default 64 GiB.",
)
@click.option(
    "--quantization",
    type=click.Choice(["int4", "int8", "fp16", "none"]),
    default="int4",
    show_default=True,
    help="Weight storage of the built graph.",
)
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Model folder to write."
)
@click.option("--digest", help="Build digest to record; a folder already carrying it is reused.")
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    help="Download cache (default: $LLMCHAIN_CACHE_DIR/sources or ~/.cache/llmchain/sources).",
)
@click.option(
    "--accuracy",
    type=click.Choice(["recommended", "int8", "exact"]),  # model.accuracy.PLANS, not imported
    default="recommended",
    show_default=True,
    help="Accuracy plan of int4/int8 builds: 'int8' computes every layer with int8 activations "
    "(fastest), 'exact' none (slow), 'recommended' all but the attention's QKV projection, which "
    "runs dense in fp32.",
)
def build(
    source: str,
    sha256: str | None,
    quantization: str,
    out: Path,
    digest: str | None,
    cache_dir: Path | None,
    accuracy: str,
    max_source_bytes: int | None,
) -> None:
    """Build a quantized ONNX model folder from a GGUF, Hugging Face or ONNX source."""
    from llmchain_server.model import BuildError, FetchError, build_model

    # SIGTERM (a deleted build pod) unwinds like Ctrl-C: the partial download is removed.
    signal.signal(signal.SIGTERM, _stop)
    try:
        manifest = build_model(
            source, out, quantization, sha256, digest, cache_dir, accuracy, max_source_bytes
        )
    except (BuildError, FetchError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot write the model folder {out}: {e}") from None
    click.echo(manifest["digest"])


@cli.group()
def index() -> None:
    """Document indexes for retrieval steps."""


@index.command("build")
@click.option(
    "--documents",
    required=True,
    help="A folder of documents (every file under it), one file, or an http(s) URL of a file "
    "or a .zip / .tar.gz of documents.",
)
@click.option("--sha256", help="Expected checksum of a --documents URL (required for URLs).")
@click.option(
    "--embedding-model",
    required=True,
    type=click.Path(path_type=Path),
    help="The embedding model folder (`llmchain model build` from a sentence-transformers model).",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Index folder.")
@click.option("--chunk-size", default=200, show_default=True, help="Tokens per chunk, at most.")
@click.option("--chunk-overlap", default=40, show_default=True, help="Tokens chunks share.")
@click.option(
    "--kind",
    type=click.Choice(["auto", "flat", "ivf", "hnsw"]),
    default="auto",
    show_default=True,
    help="Faiss index: flat (exact), ivf or hnsw (approximate); auto: flat up to 50,000 chunks, "
    "ivf above.",
)
@click.option("--digest", help="Build digest to record (the operator's index digest).")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Download cache.")
@click.option(
    "--corpus-digest",
    help="Refuse documents whose corpus digest differs (the operator's, from the ConfigMaps it "
    "read): changed documents are never indexed under an old build digest.",
)
@click.option(
    "--report",
    type=click.Path(path_type=Path),
    help="Also write the summary (documents, chunks, skipped, digest) as JSON to this file; "
    "the operator passes the container's termination log.",
)
def index_build(
    documents: str,
    sha256: str | None,
    embedding_model: Path,
    out: Path,
    chunk_size: int,
    chunk_overlap: int,
    kind: str,
    digest: str | None,
    cache_dir: Path | None,
    corpus_digest: str | None,
    report: Path | None,
) -> None:
    """Chunk, embed and index documents, once per corpus: a folder already built from the same
    documents, model, chunking and kind is reused."""
    from llmchain_server.model import FetchError
    from llmchain_server.model.fields import FolderError
    from llmchain_server.retrieval.build import IndexBuildError, build_index
    from llmchain_server.retrieval.chunking import Chunking
    from llmchain_server.retrieval.documents import documents_at

    signal.signal(signal.SIGTERM, _stop)
    try:
        with documents_at(documents, sha256, cache_dir) as root:
            manifest = build_index(
                root,
                embedding_model,
                out,
                Chunking(chunk_size, chunk_overlap),
                kind,
                digest,
                corpus_digest,
            )
    except (IndexBuildError, FetchError, FolderError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot build the index {out}: {e}") from None
    if report is not None:
        summary = {
            "documents": manifest["documents"],
            "chunks": manifest["chunks"],
            "skipped": len(manifest.get("skipped", [])),
            "digest": manifest["digest"],
            "buildDigest": manifest.get("buildDigest"),
        }
        report.write_text(json.dumps(summary))
    click.echo(manifest["digest"])


@index.command("wait")
@click.option("--dir", "folder", required=True, type=click.Path(path_type=Path))
@click.option("--digest", required=True, help="Build digest the index must carry.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait.")
def index_wait(folder: Path, digest: str, timeout: float) -> None:
    """Wait until the index build Job has written the index with this build digest."""
    from llmchain_server.retrieval.index_folder import wait_for_index

    try:
        wait_for_index(folder, digest, timeout)
    except (TimeoutError, ValueError) as e:
        raise click.ClickException(str(e)) from None


def _stop(signum: int, _frame: object) -> None:
    click.echo(f"Stopped by {signal.Signals(signum).name}.", err=True)
    raise SystemExit(128 + signum)


@model.command()
@click.option("--dir", "folder", required=True, type=click.Path(path_type=Path))
@click.option("--digest", required=True, help="Build digest the folder must carry.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait.")
def wait(folder: Path, digest: str, timeout: float) -> None:
    """Wait until the build Job has written the model folder with this build digest."""
    from llmchain_server.model import BuildError, wait_for_model

    try:
        wait_for_model(folder, digest, timeout)
    except (BuildError, ValueError) as e:
        raise click.ClickException(str(e)) from None


def main() -> None:
    cli()
