"""`/v1/embeddings`, OpenAI-compatible: texts or token ids in, vectors out (floats or base64 of
little-endian float32, as the openai client asks by default), with usage. Inputs longer than the
model's longest input are truncated and marked `truncated: true` in their item."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.responses import Response

from llmchain_server.dataplane import DataPlane
from llmchain_server.dataplane.embeddings import Embedded, Embeddings
from llmchain_server.http.openai_shapes import EmbeddingList
from llmchain_server.http.openapi import errors
from llmchain_server.http.schemas import EmbeddingRequest


def add_embedding_routes(app: FastAPI, plane: DataPlane, embeddings: Embeddings) -> None:
    @app.post(
        "/v1/embeddings",
        response_model=None,
        responses={200: {"model": EmbeddingList}, **errors(400, 404, 413, 429, 503)},
    )
    async def embed(request: EmbeddingRequest) -> Response:
        embeddings.check_model(request.model)
        texts, token_lists = _inputs(request.input)
        with plane.admission.admitted():
            done = await embeddings.embed(texts, token_lists, request.truncate, request.dimensions)
            # 2048 vectors are megabytes of JSON: written off the event loop
            body = await asyncio.to_thread(_answer, embeddings.name, done, request.encoding_format)
        return Response(body, media_type="application/json")


def _inputs(
    given: str | list[str] | list[int] | list[list[int]],
) -> tuple[list[str] | None, list[list[int]] | None]:
    if isinstance(given, str):
        return [given], None
    if given and all(isinstance(x, int) for x in given):
        return None, [given]  # type: ignore[list-item]
    if given and all(isinstance(x, list) for x in given):
        return None, given  # type: ignore[return-value]
    return given, None  # type: ignore[return-value]


def _answer(model: str, done: Embedded, encoding: str) -> bytes:
    cut = set(done.truncated)
    data = []
    for i, vector in enumerate(done.vectors):
        item: dict[str, Any] = {"object": "embedding", "index": i, "truncated": i in cut}
        if encoding == "base64":
            item["embedding"] = base64.b64encode(vector.astype("<f4").tobytes()).decode()
        else:
            item["embedding"] = np.asarray(vector, np.float64).round(8).tolist()
        data.append(item)
    answer = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": done.tokens, "total_tokens": done.tokens},
    }
    return json.dumps(answer, separators=(",", ":")).encode()
