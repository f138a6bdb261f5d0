"""`llmchain serve`, the composition root: the only module that knows every layer. It loads the
model into the engine (and the embedding model, when given), builds the dataplane with its cache
and the chain with its memory store, and serves the HTTP application until SIGTERM has drained
it."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from llmchain_server.chains.runtime import ChainRunner
from llmchain_server.config import ChainConfig, template_problems
from llmchain_server.dataplane import DataPlane, ServerMetrics, ServerSettings
from llmchain_server.dataplane.cache import ResponseCache
from llmchain_server.dataplane.embeddings import EmbeddingMetrics, Embeddings
from llmchain_server.dataplane.memory import MemoryStore
from llmchain_server.engine import Engine, EngineSettings
from llmchain_server.engine.embedder import Embedder
from llmchain_server.http.app import create_app
from llmchain_server.http.server import serve
from llmchain_server.retrieval.retriever import Retriever

log = logging.getLogger(__name__)


def load_chain(
    path: Path, plane: DataPlane, memory_url: str | None, retriever: Retriever | None = None
) -> ChainRunner:
    """The chain from its config file; its memory store when it has memory."""
    try:
        config = ChainConfig.model_validate(yaml.safe_load(path.read_text()))
        problems = template_problems(config.chain)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ValueError(f"cannot load the chain {path}: {e}") from None
    if problems:
        raise ValueError(f"chain {path}: {'; '.join(problems)}")
    memory = None
    if config.chain.memory is not None:
        if not memory_url:
            raise ValueError(f"chain {config.name} has memory: give --memory-url (or --redis-url)")
        memory = MemoryStore(
            memory_url, config.name, config.chain.memory.window, config.chain.memory.ttl_seconds
        )
    return ChainRunner(config, plane, memory, retriever)


def read_api_key(settings: ServerSettings) -> str | None:
    """The key clients must send, from its file; None when no file is set."""
    if settings.api_key_file is None:
        return None
    api_key = settings.api_key_file.read_text().strip()
    if not api_key:
        raise SystemExit(f"the API key file {settings.api_key_file} is empty")
    return api_key


def run(
    model: Path,
    host: str,
    port: int,
    model_name: str | None = None,
    chain_file: Path | None = None,
    redis_url: str | None = None,
    memory_url: str | None = None,
    embedding_model: Path | None = None,
    embedding_model_name: str | None = None,
    index: Path | None = None,
) -> int:
    registry = CollectorRegistry()
    engine = Engine(model, EngineSettings.from_env(), registry=registry)
    settings = ServerSettings.from_env(model_name or model.name)
    api_key = read_api_key(settings)
    metrics = ServerMetrics(registry)
    cache = None
    if redis_url:
        cache = ResponseCache(
            redis_url, engine.digest, settings.cache_ttl_seconds, settings.cache_sampled, metrics
        )
    plane = DataPlane(engine, settings, metrics, cache)
    embeddings = None
    if embedding_model is not None:
        embeddings = Embeddings(
            Embedder(embedding_model, engine.settings.provider, engine.settings.threads),
            embedding_model_name or embedding_model.name,
            EmbeddingMetrics(registry),
        )
    retriever = None
    if index is not None:
        if embeddings is None:
            raise ValueError(f"--index {index} needs the --embedding-model it was built with")
        retriever = Retriever(index, embeddings)
    chain = (
        load_chain(chain_file, plane, memory_url or redis_url, retriever) if chain_file else None
    )
    engine.start()
    app = create_app(plane, metrics, api_key, chain, embeddings)
    log.info("Serving %s on %s:%d", settings.model_name, host, port)
    try:
        serve(
            app,
            plane.admission,
            settings.grace_seconds,
            host,
            port,
            settings.header_timeout_seconds,
            settings.max_connections,
        )
    finally:
        engine.stop()
    return 0
