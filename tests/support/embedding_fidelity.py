"""The golden texts' embeddings by a built embedding model folder, as a program, so a test can
run it on onnxruntime's AVX2 kernels under qemu-user (tests/support/fidelity.py's EMULATOR):

    python -m tests.support.embedding_fidelity MODEL_DIR OUT.npy
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).resolve().parent.parent / "golden"


def embed_goldens(folder: Path) -> np.ndarray:
    from llmchain_server.engine.embedder import Embedder

    texts = json.loads((GOLDEN / "embedding_texts.json").read_text())
    embedder = Embedder(folder, provider="cpu")
    return embedder.embed([t.ids for t in embedder.tokenize(texts)])


if __name__ == "__main__":
    np.save(sys.argv[2], embed_goldens(Path(sys.argv[1])))
