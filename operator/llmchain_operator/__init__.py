"""The llmchain operator: API models of LLMChainApp, pure builders of child objects, reconcile,
the kopf registration module and operator metrics (see DESIGN.md)."""

__version__ = "0.1.0"
