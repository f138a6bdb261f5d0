"""The chain server's ASGI application: the OpenAI-compatible routes, the chain's routes when
there is a chain, `/v1/embeddings` when there is an embedding model, health and metrics, the
error handlers, and the Guard around them all."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp

from llmchain_server.chains.runtime import ChainRunner
from llmchain_server.dataplane import DataPlane, ServerMetrics
from llmchain_server.dataplane.embeddings import Embeddings
from llmchain_server.http import errors, openapi
from llmchain_server.http.chain_routes import add_chain_routes, batch_limit
from llmchain_server.http.chain_schemas import documented_bodies
from llmchain_server.http.embedding_routes import add_embedding_routes
from llmchain_server.http.health_routes import add_health_routes
from llmchain_server.http.middleware import Guard
from llmchain_server.http.openai_routes import add_openai_routes


def create_app(
    plane: DataPlane,
    metrics: ServerMetrics,
    api_key: str | None = None,
    chain: ChainRunner | None = None,
    embeddings: Embeddings | None = None,
) -> ASGIApp:
    app = FastAPI(
        title="llmchain chain server",
        version="0.1.0",
        description="OpenAI-compatible LLM server with chains (llmchain-operator).",
    )
    errors.install(app, plane.settings.retry_after_seconds)
    add_health_routes(app, plane, metrics)
    add_openai_routes(app, plane, embeddings.name if embeddings else None)
    if embeddings is not None:
        add_embedding_routes(app, plane, embeddings)
    chain_paths = add_chain_routes(app, chain) if chain is not None else ()
    bodies = documented_bodies(chain, chain_paths, batch_limit(chain)) if chain else {}
    openapi.install(app, plane.settings, api_key is not None, bodies)
    settings = plane.settings
    return Guard(
        app, metrics, settings.max_body_bytes, api_key, chain_paths, settings.body_timeout_seconds
    )
