"""`retrieval` steps: the query template rendered, the index searched (retrieval/retriever.py);
the output is the passages found, and the run's metadata lists their sources."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from jinja2 import Template

from llmchain_server.chains.templates import compile_template, render
from llmchain_server.config import RetrievalStep, Step
from llmchain_server.errors import InvalidRequest
from llmchain_server.retrieval.retriever import Retriever

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceRecord:
    """A passage a retrieval step found, as the run's metadata lists it."""

    step: str
    source: str
    score: float
    similarity: float

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "source": self.source,
            "score": self.score,
            "similarity": self.similarity,
        }


class RetrievalSteps:
    def __init__(self, steps: list[Step], retriever: Retriever) -> None:
        self.retriever = retriever
        self._queries: dict[str, Template] = {
            s.name: compile_template(s.query, f"step {s.name} query")
            for s in steps
            if isinstance(s, RetrievalStep)
        }

    async def run(
        self,
        step: RetrievalStep,
        variables: dict[str, Any],
        sources: list[SourceRecord],
        truncated: list[str],
    ) -> list[dict[str, Any]]:
        query = render(self._queries[step.name], variables, f"step {step.name} query")
        if not query.strip():
            raise InvalidRequest(f"step {step.name}: the rendered query is empty", "input")
        found = await self.retriever.search(query, step.k, step.score_threshold, step.mode)
        if found.query_truncated:
            truncated.append(step.name)
        passages = [p.to_json() for p in found.passages]
        sources.extend(
            SourceRecord(step.name, p["source"], p["score"], p["similarity"]) for p in passages
        )
        log.info(
            "Ran step %s: %d passages",
            step.name,
            len(passages),
            extra={"step": step.name, "passages": len(passages)},
        )
        return passages
