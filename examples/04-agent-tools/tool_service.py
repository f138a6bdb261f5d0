"""The example's tool service: a unit converter and an order-status lookup over a fixed table,
as JSON over HTTP. Python's standard library only, so it runs in any Python image (the example
runs it in the chain server's image, from a ConfigMap).

    GET /convert?value=42&from_unit=km&to_unit=mi   -> {"value": 26.098, "unit": "mi"}
    GET /orders/<id>                                 -> {"order_id": ..., "status": ...}
    GET /healthz                                     -> ok

    python tool_service.py [--port 8080]
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

FACTORS = {
    ("km", "mi"): 0.621371,
    ("mi", "km"): 1.609344,
    ("kg", "lb"): 2.204623,
    ("lb", "kg"): 0.453592,
}
ORDERS = {
    "A1234": {"status": "shipped", "carrier": "DHL", "eta": "2026-12-09"},
    "B5678": {"status": "pending", "carrier": None, "eta": None},
    "C9012": {"status": "delivered", "carrier": "UPS", "eta": "2026-12-01"},
}


class Handler(BaseHTTPRequestHandler):
    server_version = "llmchain-example-tools/1"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/healthz":
            self._send(200, "ok")
        elif url.path == "/convert":
            self._convert(parse_qs(url.query))
        elif url.path.startswith("/orders/"):
            order = unquote(url.path.removeprefix("/orders/"))
            found = ORDERS.get(order.upper())
            if found is None:
                self._send(404, {"error": f"no order {order[:32]}"})
            else:
                self._send(200, {"order_id": order.upper(), **found})
        else:
            self._send(404, {"error": "not found"})

    def _convert(self, query: dict[str, list[str]]) -> None:
        try:
            value = float(query["value"][0])
            source, target = query["from_unit"][0], query["to_unit"][0]
        except (KeyError, ValueError):
            self._send(400, {"error": "give value, from_unit and to_unit"})
            return
        factor = 1.0 if source == target else FACTORS.get((source, target))
        if factor is None:
            self._send(400, {"error": f"cannot convert {source} to {target}"})
            return
        self._send(200, {"value": round(value * factor, 3), "unit": target})

    def _send(self, status: int, body: object) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        kind = "text/plain" if isinstance(body, str) else "application/json"
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would drown the example's logs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
