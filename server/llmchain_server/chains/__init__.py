"""Chains: sequential prompt → LLM steps from the chain config, with memory per session."""
