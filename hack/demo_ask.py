"""`make demo`'s questions to the running app, through `kubectl port-forward` to its Service:
the seed's question on the chain endpoint (twice: the second answer comes from the cache
sidecar), the same prompt through the official `openai` client, and the live metrics.

    python hack/demo_ask.py BASE_URL APP
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request

import openai

QUESTION = "What is the capital of France?"
METRICS = (
    "llmchain_requests_total",
    "llmchain_cache_",
    "llmchain_model_info",
    "llmchain_generated_tokens_total",
    "llmchain_time_to_first_token_seconds_count",
    "llmchain_time_to_first_token_seconds_sum",
)


def post(url: str, payload: dict[str, object]) -> tuple[float, dict[str, object]]:
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=120) as reply:
        body: dict[str, object] = json.load(reply)
    return time.monotonic() - started, body


def main() -> None:
    base, app = sys.argv[1:3]
    print(f"\n== Asking {QUESTION!r}")
    chain_url = f"{base}/v1/chains/{app}/invoke"
    first, answer = post(chain_url, {"input": {"question": QUESTION}})
    print(f"chain endpoint  POST {chain_url}\n  → {answer['output']!r}  ({first * 1000:.0f} ms)")
    again, repeat = post(chain_url, {"input": {"question": QUESTION}})
    print(
        f"the same ask again (temperature 0, so cacheable): {again * 1000:.0f} ms from the cache "
        f"sidecar, same answer: {repeat['output'] == answer['output']}"
    )
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    started = time.monotonic()
    # The seed's prompt as a chat message: the same words the chain's template renders.
    reply = client.chat.completions.create(
        model=model,
        temperature=0,
        max_tokens=48,
        messages=[{"role": "user", "content": f"Question: {QUESTION}\nAnswer:"}],
    )
    print(
        f"openai client   chat.completions model={model}\n"
        f"  → {reply.choices[0].message.content!r}  "
        f"({(time.monotonic() - started) * 1000:.0f} ms)"
    )
    print("\n== Live metrics of the pod that answered (GET /metrics)")
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            # Series at 0 (each route's statuses exist from the start) are left out.
            if line.startswith(METRICS) and "_created" not in line and not line.endswith(" 0.0"):
                print(f"  {line}")


if __name__ == "__main__":
    main()
