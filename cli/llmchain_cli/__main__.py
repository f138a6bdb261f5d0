"""`python -m llmchain_cli`: the same as the `llmchain` command."""

from llmchain_cli import main

main()
