"""The routes kubelets and Prometheus call: liveness, readiness (false while loading and once
draining) and the metrics page. They need no API key."""

from __future__ import annotations

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from llmchain_server.contract import LIVE_PATH, METRICS_PATH, READY_PATH
from llmchain_server.dataplane import DataPlane, ServerMetrics


def add_health_routes(app: FastAPI, plane: DataPlane, metrics: ServerMetrics) -> None:
    @app.get(LIVE_PATH, include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get(READY_PATH, include_in_schema=False)
    async def readyz() -> JSONResponse:
        if plane.admission.draining:
            return JSONResponse({"status": "draining"}, 503)
        if not plane.model_ready:
            return JSONResponse({"status": "loading"}, 503)
        return JSONResponse({"status": "ready", "model": plane.settings.model_name})

    @app.get(METRICS_PATH, include_in_schema=False)
    async def metrics_page() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
