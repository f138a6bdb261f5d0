"""Why a request could not be served, as plain exceptions: no HTTP here.

Every layer below the routes (chains, dataplane, engine) raises these; `http/errors.py` maps
each kind to a status code, an OpenAI error type and a Retry-After, in one table. `param` names
the request field at fault when there is one (`messages`, `prompt`, `max_tokens`, `input`).
"""

from __future__ import annotations


class ServingError(Exception):
    """A request the server could not serve; the message is safe to show the client."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(ServingError):
    """The request itself is wrong (a 400)."""


class PromptTooLong(InvalidRequest):
    """The prompt, with the tokens asked for, does not fit the limit or the context."""


class ModelNotFound(ServingError):
    """The request names a model this server does not serve."""


class Overloaded(ServingError):
    """Too much work in flight or queued; retry shortly."""


class Draining(ServingError):
    """The server is shutting down; retry (another replica will answer)."""


class Unavailable(ServingError):
    """Something the request needs (the memory store) cannot be reached; retry."""


class OutputInvalid(ServingError):
    """The model's output is unusable (a chain step's JSON cut by its maxTokens): a 502."""


class GenerationFailed(ServingError):
    """The engine failed while generating (a 500; the cause is in the server's log)."""
