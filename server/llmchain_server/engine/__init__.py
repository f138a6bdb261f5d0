"""The generation engine: onnxruntime session, KV cache, sampling, continuous batching."""

from llmchain_server.engine.constraints import Grammar, GrammarError
from llmchain_server.engine.engine import ContextLengthError, Engine, EngineSettings
from llmchain_server.engine.request import Chunk, Generation
from llmchain_server.engine.sampling import SamplingParams
from llmchain_server.engine.scheduler import EngineStopped, QueueFull

__all__ = [
    "Chunk",
    "ContextLengthError",
    "Engine",
    "EngineSettings",
    "EngineStopped",
    "Generation",
    "Grammar",
    "GrammarError",
    "QueueFull",
    "SamplingParams",
]
