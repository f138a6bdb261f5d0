"""The served OpenAPI document, trusted as a client generator would: schemathesis generates
requests from it (valid and invalid, streams included) against the real server with the real
model, a chain with memory in a real redis-server and an API key, and checks every answer
against the document: no 5xx, only declared statuses, content types and headers, bodies that
match their schemas, invalid requests refused, the key required, undeclared methods refused.
Bounded: 30 examples per operation and mode, at most four generated tokens each (~30 s)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from tests.support.redis import RedisServer
from tests.support.server import ServerProcess

KEY = "openapi-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAIN = {
    "name": "ask",
    "chain": {
        "inputs": ["question", "tone"],
        "steps": [
            {
                "name": "answer",
                "system": "Answer in a {{ tone }} tone.",
                "prompt": "{% for t in history %}{{ t.inputs.question }}: {{ t.output }}\n"
                "{% endfor %}Question: {{ question }}",
                "generation": {"maxTokens": 4},
            }
        ],
        "memory": {"window": 2, "ttlSeconds": 600},
    },
}
EXAMPLES = 30
"""Per operation and mode: 140 requests in all, each of at most four generated tokens."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
    unsupported_method,
]


# A request that breaks the schema may also be larger than the server's body limit: 413 is the
# right refusal for it (schemathesis' default list of refusals lacks it; the rest is its default).
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [
                    *("400", "401", "403", "404", "405", "406", "409"),
                    *("413", "415", "422", "428", "429", "5xx"),
                ]
            }
        }
    }
)


@pytest.fixture(scope="module")
def server(
    model_dirs: Callable[[str], Path],
    embedding_dirs: Callable[[str], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("openapi")
    redis = RedisServer(workdir=workdir)
    redis.start()
    (workdir / "key").write_text(KEY)
    (workdir / "chain.yaml").write_text(yaml.safe_dump(CHAIN))
    s = ServerProcess(
        model_dirs("int4"),
        args=[
            "--chain",
            str(workdir / "chain.yaml"),
            "--memory-url",
            redis.url,
            "--embedding-model",
            str(embedding_dirs("int8")),
            "--embedding-model-name",
            "minilm",
        ],
        env={
            "LLMCHAIN_API_KEY_FILE": str(workdir / "key"),
            "LLMCHAIN_MAX_TOKENS_LIMIT": "4",  # the default (256) is clamped to it
            "LLMCHAIN_MAX_PROMPT_TOKENS": "200",
            "LLMCHAIN_MAX_CONTEXT": "256",
            "LLMCHAIN_MAX_BODY_BYTES": "20000",
        },
    )
    try:
        s.wait_ready()
        yield s
        assert s.stop() == 0
    finally:
        s.stop()
        redis.stop()


@pytest.fixture(scope="module")
def document(server: ServerProcess) -> dict[str, Any]:
    status, _, raw = server.request("GET", "/openapi.json", headers=AUTH)
    assert status == 200
    return json.loads(raw)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def api_schema(server: ServerProcess) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=AUTH, config=CONFIG)


OPERATIONS = [
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/chains/ask/invoke"),
    ("POST", "/v1/chains/ask/batch"),
    ("POST", "/v1/chains/ask/stream"),
    ("POST", "/v1/embeddings"),
]
MODES = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]


@pytest.mark.parametrize("mode", MODES, ids=str)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_every_answer_matches_the_document(
    api_schema: schemathesis.BaseSchema, method: str, path: str, mode: schemathesis.GenerationMode
) -> None:
    """Generated requests, valid ones (positive) or each breaking one rule (negative)."""
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    def answers(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=AUTH, checks=CHECKS, timeout=60)

    answers()


STREAMS = [
    (
        "/v1/chat/completions",
        {"model": "smollm2", "stream": True, "messages": [{"role": "user", "content": "Hi"}]},
    ),
    (
        "/v1/completions",
        {
            "model": "smollm2",
            "stream": True,
            "prompt": "Hi",
            "stream_options": {"include_usage": True},
        },
    ),
    (
        "/v1/chains/ask/stream",
        {
            "input": {"question": "Why?", "tone": "calm"},
            "config": {"configurable": {"session_id": "s-1"}},
        },
    ),
]


@pytest.mark.parametrize(("path", "body"), STREAMS, ids=[s[0] for s in STREAMS])
def test_streams_match_the_document(
    api_schema: schemathesis.BaseSchema, path: str, body: dict[str, Any]
) -> None:
    case = api_schema[path]["POST"].Case(body=body, media_type="application/json")
    response = case.call_and_validate(headers=AUTH, checks=CHECKS, timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"][0].startswith("text/event-stream")


def test_the_document_declares_what_the_server_answers(document: dict[str, Any]) -> None:
    paths = document["paths"]
    assert set(paths) == {
        "/v1/models",
        "/v1/models/{model_id}",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/chains/ask/invoke",
        "/v1/chains/ask/batch",
        "/v1/embeddings",
        "/v1/chains/ask/stream",
    }
    operations = [op for item in paths.values() for op in item.values()]
    for op in operations:
        assert "422" not in op["responses"]
        assert op["security"] == [{"apiKey": []}]
        assert op["responses"]["401"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorAnswer"
        }
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    chat = paths["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "404", "413", "429", "503"} <= set(chat)
    assert set(chat["200"]["content"]) == {"application/json", "text/event-stream"}
    assert "Retry-After" in chat["429"]["headers"]
    assert set(paths["/v1/chains/ask/stream"]["post"]["responses"]["200"]["content"]) == {
        "text/event-stream"
    }
    # Rules the code enforces are in the schema.
    stop = schemas["ChatRequest"]["properties"]["stop"]["anyOf"]
    assert any(choice.get("maxItems") == 4 for choice in stop)
    prompt = schemas["CompletionRequest"]["properties"]["prompt"]["anyOf"]
    assert prompt[0]["minLength"] == 1
    seed = schemas["ChatRequest"]["properties"]["seed"]["anyOf"][0]
    assert seed["maximum"] == 2**63 - 1
    tokens = schemas["ChatRequest"]["properties"]["max_tokens"]["anyOf"][0]
    assert tokens["maximum"] == 4  # this server's LLMCHAIN_MAX_TOKENS_LIMIT
    body = schemas["AskInvokeRequest"]
    assert body["required"] == ["input", "config"]
    chain_input = schemas["AskInput"]
    assert chain_input["required"] == ["question", "tone"]
    assert chain_input["additionalProperties"] is False
    session = schemas["Configurable"]["properties"]["session_id"]
    assert session["pattern"].startswith("^") and schemas["Configurable"]["required"] == [
        "session_id"
    ]


def test_the_openai_client_retrieves_the_model(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    assert client.models.retrieve("smollm2").id == "smollm2"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    reply = client.completions.create(model="smollm2", prompt="Once upon a time")
    assert reply.usage is not None and reply.usage.completion_tokens <= 4
    # Model ids are client input: every id is counted under one route label, never its own.
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'route="/v1/models/{id}",status="200"' in metrics
    assert 'route="/v1/models/{id}",status="404"' in metrics
    assert "gpt-4" not in metrics
