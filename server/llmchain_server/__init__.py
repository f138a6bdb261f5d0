"""What runs inside the model-server pods: chain config schema, model build, generation engine,
chain runtime, response cache, HTTP API and metrics (see DESIGN.md). Arrives with issues #3-#5."""
