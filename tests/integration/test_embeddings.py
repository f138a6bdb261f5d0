"""`/v1/embeddings` on a real `llmchain serve` with the chat model and all-MiniLM-L6-v2 (fp32
build): the openai client and LangChain's OpenAIEmbeddings against the sentence-transformers
goldens, token-id input, truncation, batching across concurrent requests, and bad input."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import pytest
from langchain_openai import OpenAIEmbeddings

from tests.support.server import ServerProcess

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
TEXTS: list[str] = json.loads((GOLDEN / "embedding_texts.json").read_text())
REFERENCE = np.array(json.loads((GOLDEN / "embeddings.json").read_text())["embeddings"])
NAME = "minilm"


@pytest.fixture(scope="module")
def server(
    model_dirs: Callable[[str], Path], embedding_dirs: Callable[[str], Path]
) -> Iterator[ServerProcess]:
    s = ServerProcess(
        model_dirs("int4"),
        args=["--embedding-model", str(embedding_dirs("none")), "--embedding-model-name", NAME],
    )
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def embed(server: ServerProcess, payload: dict[str, object]) -> tuple[int, dict[str, object]]:
    status, _, body = server.post("/v1/embeddings", {"model": NAME, **payload})
    return status, body


def test_the_openai_client_gets_the_reference_vectors(server: ServerProcess) -> None:
    texts = [t for t in TEXTS if t.strip()]  # the API refuses empty inputs
    reference = REFERENCE[[i for i, t in enumerate(TEXTS) if t.strip()]]
    answer = client(server).embeddings.create(model=NAME, input=texts)  # base64 by default
    vectors = np.array([d.embedding for d in answer.data])
    assert [d.index for d in answer.data] == list(range(len(texts)))
    assert (vectors * reference).sum(1).min() >= 0.9999
    tokens = json.loads((GOLDEN / "embeddings.json").read_text())["tokens"]
    assert answer.usage.prompt_tokens == sum(
        n for n, t in zip(tokens, TEXTS, strict=True) if t.strip()
    )
    floats = client(server).embeddings.create(model=NAME, input=texts[0], encoding_format="float")
    assert np.allclose(floats.data[0].embedding, vectors[0], atol=1e-6)


def test_langchain_openai_embeddings(server: ServerProcess) -> None:
    # check_embedding_ctx_length=False: LangChain would otherwise count tokens with OpenAI's
    # tiktoken vocabulary (downloaded at run time) and send those ids, which mean nothing to
    # another model; LangChain documents the flag for OpenAI-compatible servers.
    embeddings = OpenAIEmbeddings(
        model=NAME,
        base_url=f"{server.url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        check_embedding_ctx_length=False,
    )
    documents = embeddings.embed_documents(TEXTS[:5])
    query = embeddings.embed_query(TEXTS[0])
    assert (np.array(documents) * REFERENCE[:5]).sum(1).min() >= 0.9999
    assert np.dot(query, documents[0]) > 0.9999
    assert np.dot(query, documents[3]) < 0.5  # the cat on the mat is about something else


def test_token_ids_and_texts_give_the_same_vector(
    server: ServerProcess, embedding_dirs: Callable[[str], Path]
) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(embedding_dirs("none") / "tokenizer.json"))  # served
    ids = tokenizer.encode(TEXTS[1], add_special_tokens=False).ids
    by_text = embed(server, {"input": TEXTS[1]})[1]["data"][0]["embedding"]  # type: ignore[index]
    status, one = embed(server, {"input": ids})
    assert status == 200
    status, many = embed(server, {"input": [ids, ids[:3]]})
    assert status == 200
    assert np.allclose(one["data"][0]["embedding"], by_text, atol=1e-6)  # type: ignore[index]
    assert len(many["data"]) == 2  # type: ignore[arg-type]


def test_dimensions_shorten_and_renormalise(server: ServerProcess) -> None:
    status, body = embed(server, {"input": "How do I scale?", "dimensions": 64})
    vector = np.array(body["data"][0]["embedding"])  # type: ignore[index]
    assert status == 200
    assert vector.shape == (64,)
    assert abs(np.linalg.norm(vector) - 1) < 1e-5


def metric(server: ServerProcess, name: str) -> float:
    _, _, text = server.request("GET", "/metrics")
    line = next(ln for ln in text.decode().splitlines() if ln.startswith(name + " "))
    return float(line.split()[-1])


def test_a_long_input_is_truncated_and_marked(server: ServerProcess) -> None:
    before = metric(server, "llmchain_embedding_truncated_inputs_total")
    status, body = embed(server, {"input": ["word " * 2000, "short"]})
    assert status == 200
    assert [d["truncated"] for d in body["data"]] == [True, False]  # type: ignore[attr-defined]
    assert body["usage"]["prompt_tokens"] == 256 + 3  # type: ignore[index]
    status, body = embed(server, {"input": "word " * 2000, "truncate": False})
    assert status == 400
    assert "longer than minilm's 256 tokens" in body["error"]["message"]  # type: ignore[index]
    assert metric(server, "llmchain_embedding_truncated_inputs_total") == before + 1


def test_concurrent_requests_share_model_runs(server: ServerProcess) -> None:
    def runs() -> float:
        return metric(server, "llmchain_embedding_batch_inputs_count")

    before = runs()
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda t: embed(server, {"input": [t] * 4}), TEXTS[:5] * 6))
    assert all(status == 200 for status, _ in answers)
    # 30 requests of 4 inputs each, coalesced while a run is busy: fewer runs than requests
    assert runs() - before < 30
    first = np.array(answers[0][1]["data"][0]["embedding"])  # type: ignore[index]
    assert (first * REFERENCE[0]).sum() >= 0.9999  # batched with others, still the reference


@pytest.mark.parametrize(
    ("payload", "status", "param", "message"),
    [
        ({"input": ""}, 400, "input", "input[0] is empty"),
        ({"input": ["ok", "   "]}, 400, "input", "input[1] is empty"),
        ({"input": []}, 400, "input", ""),
        ({"input": [[]]}, 400, "input", "input[0] is an empty list of tokens"),
        ({"input": [5, 99999]}, 400, "input", "token id 99999 is not in the vocabulary"),
        ({"input": [-1]}, 400, "input", ""),
        ({"input": ["x"] * 2049}, 400, "input", ""),
        ({"input": "x", "dimensions": 385}, 400, "dimensions", "within 1..384"),
        ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format", ""),
        ({"input": 3.5}, 400, "input", ""),
        ({"input": "x", "model": "gpt-4"}, 404, "model", "is not served here"),
    ],
)
def test_bad_requests_get_a_json_error_naming_the_field(
    server: ServerProcess, payload: dict[str, object], status: int, param: str, message: str
) -> None:
    code, body = embed(server, payload)
    assert code == status, body
    error = body["error"]  # type: ignore[index]
    assert param in (error["param"] or "") or param in error["message"]  # type: ignore[index]
    assert message in error["message"]  # type: ignore[index]


def test_the_chat_model_still_answers_and_both_are_listed(server: ServerProcess) -> None:
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["smollm2", NAME]
    chat = client(server).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Say hi"}], max_tokens=4
    )
    assert chat.choices[0].message.content


def test_base64_is_little_endian_float32(server: ServerProcess) -> None:
    _, body = embed(server, {"input": "abc", "encoding_format": "base64"})
    raw = base64.b64decode(body["data"][0]["embedding"])  # type: ignore[index]
    vector = np.frombuffer(raw, "<f4")
    assert vector.shape == (384,)
    assert abs(np.linalg.norm(vector) - 1) < 1e-5


def test_the_batching_worker_comes_back_after_close(embedding_dirs: Callable[[str], Path]) -> None:
    from prometheus_client import CollectorRegistry

    from llmchain_server.dataplane.embeddings import EmbeddingMetrics, Embeddings
    from llmchain_server.engine.embedder import Embedder

    async def twice() -> tuple[np.ndarray, np.ndarray]:
        embedder = Embedder(embedding_dirs("int8"), provider="cpu")
        embeddings = Embeddings(embedder, NAME, EmbeddingMetrics(CollectorRegistry()))
        first = await embeddings.embed(["a text"])
        await embeddings.close()  # the worker is gone; the next request starts another
        second = await asyncio.wait_for(embeddings.embed(["a text"]), 60)
        await embeddings.close()
        return first.vectors, second.vectors

    first, second = asyncio.run(twice())
    np.testing.assert_array_equal(first, second)
