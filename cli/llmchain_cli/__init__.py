"""The `llmchain` command line: one entry point that dispatches to the operator and the server.

It lives in its own package so that neither `llmchain_operator` nor `llmchain_server` has to
import the other to offer its subcommands (see the import-linter contracts in pyproject.toml).
"""

from llmchain_cli.main import main

__all__ = ["main"]
