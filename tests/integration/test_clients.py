"""Real clients against the real server, without adaptation: the seed's Q&A program brought up
to date (LangChain's ChatOpenAI and OpenAI with base_url pointing at the server, in a prompt →
LLM chain) and LangServe's RemoteRunnable on the chain endpoints."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_openai import ChatOpenAI, OpenAI
from langserve import RemoteRunnable

from tests.support.server import ServerProcess

SEED_TEMPLATE = """
Question: {question}
Answer:
"""
QA_CHAIN = {
    "name": "qa",
    "chain": {
        "inputs": ["question"],
        "steps": [
            {
                "name": "answer",
                "prompt": "Question: {{ question }}\nAnswer:",
                "generation": {"maxTokens": 24},
            }
        ],
    },
}


@pytest.fixture(scope="module")
def server(
    model_dirs: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    chain = tmp_path_factory.mktemp("chain") / "qa.yaml"
    chain.write_text(yaml.safe_dump(QA_CHAIN))
    s = ServerProcess(model_dirs("int4"), args=["--chain", str(chain)])
    s.wait_ready()
    yield s
    s.stop()


def test_the_seed_program_with_chat_openai(server: ServerProcess) -> None:
    llm = ChatOpenAI(
        base_url=f"{server.url}/v1",
        api_key="unused",
        model="smollm2",
        temperature=0,
        max_tokens=24,
        max_retries=0,
    )
    chain = PromptTemplate.from_template(SEED_TEMPLATE) | llm | StrOutputParser()
    answer = chain.invoke({"question": "What is the capital of France?"})
    assert isinstance(answer, str) and answer.strip()
    streamed = "".join(chain.stream({"question": "What is the capital of France?"}))
    assert streamed == answer


def test_the_seed_program_with_the_completions_llm(server: ServerProcess) -> None:
    llm = OpenAI(
        base_url=f"{server.url}/v1",
        api_key="unused",
        model="smollm2",
        temperature=0,
        max_tokens=16,
        max_retries=0,
    )
    chain = PromptTemplate.from_template(SEED_TEMPLATE) | llm
    answer = chain.invoke({"question": "What is the capital of France?"})
    assert isinstance(answer, str) and answer.strip()


def test_remote_runnable_on_the_chain_endpoints(server: ServerProcess) -> None:
    remote = RemoteRunnable(f"{server.url}/v1/chains/qa")
    answer = remote.invoke({"question": "What is the capital of France?"})
    assert isinstance(answer, str) and answer
    assert "".join(remote.stream({"question": "What is the capital of France?"})) == answer
    batch = remote.batch([{"question": "Name a colour."}, {"question": "Name a fruit."}])
    assert len(batch) == 2 and all(isinstance(b, str) and b for b in batch)
