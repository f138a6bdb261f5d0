"""The dataplane, between the routes (and chains) and the engine: admission, prompts and their
limits, sampling parameters, the response cache and conversation memory. It raises the plain
errors of `llmchain_server.errors` and knows nothing of HTTP."""

from llmchain_server.dataplane.admission import Admission
from llmchain_server.dataplane.metrics import ServerMetrics
from llmchain_server.dataplane.plane import DataPlane, Result
from llmchain_server.dataplane.settings import ServerSettings

__all__ = ["Admission", "DataPlane", "Result", "ServerMetrics", "ServerSettings"]
