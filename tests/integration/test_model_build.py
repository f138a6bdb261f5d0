"""`llmchain model build` on the real GGUF: the folder, its manifest, determinism, reuse, and
fetching from a local HTTP server (checksums, resume, and every failure named)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
import pytest

from llmchain_server.model import BuildError, FetchError, build_model, verify
from llmchain_server.model.fetch import fetch
from tests.support.model import GGUF_SHA256, ModelFileServer, gguf_path
from tests.support.redis import free_port

LLMCHAIN = [sys.executable, "-m", "llmchain_cli"]


@pytest.fixture(scope="module")
def files() -> Iterator[ModelFileServer]:
    server = ModelFileServer(gguf_path())
    yield server
    server.close()


def test_int4_folder_has_graph_tokenizer_template_config_and_manifest(
    model_dirs: Callable[[str], Path],
) -> None:
    folder = model_dirs("int4")
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "chat_template.jinja",
        "config.json",
        "manifest.json",
        "model.onnx",
        "tokenizer.json",
    ]
    manifest = verify(folder)
    assert manifest["quantization"] == "int4"
    assert manifest["source"]["kind"] == "gguf"
    assert manifest["source"]["sha256"] == f"sha256:{GGUF_SHA256}"
    assert manifest["builder"] == "llmchain-model-build/4"
    assert manifest["digest"].startswith("sha256:")
    assert manifest["totalBytes"] == sum(f["bytes"] for f in manifest["files"].values())
    assert 130e6 < manifest["parameters"] < 140e6
    config = json.loads((folder / "config.json").read_text())
    assert config["model"]["layers"] == 30 and config["model"]["kv_heads"] == 3
    assert 2 in config["eosTokenIds"]
    assert "<|im_start|>" in (folder / "chat_template.jinja").read_text()

    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    assert {"MatMulNBits", "GroupQueryAttention", "SkipSimplifiedLayerNormalization"} <= ops
    assert "MatMul" in ops  # the per-block offsets of Q4_1 (exact carry-over)
    inputs = [i.name for i in graph.input]
    assert inputs[:2] == ["input_ids", "attention_mask"]
    assert "past_key_values.29.value" in inputs
    assert "present.0.key" in [o.name for o in graph.output]
    # The Q4_1 weights went in as 4-bit blocks (not dequantized): q blobs are half a byte/weight.
    gate_up = next(i for i in graph.initializer if i.name == "blk.0/gate_up.qweight")
    assert list(gate_up.dims) == [3072, 18, 16]
    # The recommended accuracy plan: the QKV projection dense fp32 (the blocks' exact values),
    # every other linear layer MatMulNBits with int8 activations.
    assert config["accuracy"]["plan"] == "recommended"
    levels = {
        n.name.rsplit("/", 1)[-1]: next(a.i for a in n.attribute if a.name == "accuracy_level")
        for n in graph.node
        if n.op_type == "MatMulNBits"
    }
    assert levels == {"attn_output": 4, "gate_up": 4, "ffn_down": 4, "lm_head": 4}
    qkv = next(i for i in graph.initializer if i.name == "blk.0/qkv.weight")
    assert list(qkv.dims) == [576, 960] and qkv.data_type == onnx.TensorProto.FLOAT


def test_building_twice_gives_the_same_digest(
    tmp_path: Path, model_dirs: Callable[[str], Path]
) -> None:
    again = build_model(str(gguf_path()), tmp_path / "again", "int4")
    assert again["digest"] == verify(model_dirs("int4"))["digest"]


def test_a_folder_with_the_build_digest_is_reused(tmp_path: Path) -> None:
    out = tmp_path / "m"
    first = build_model(str(gguf_path()), out, "int8", build_digest="sha256:feed")
    stamp = (out / "model.onnx").stat().st_mtime_ns
    again = subprocess.run(
        [
            *LLMCHAIN,
            "model",
            "build",
            "--source",
            str(gguf_path()),
            "--quantization",
            "int8",
            "--out",
            str(out),
            "--digest",
            "sha256:feed",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "reused" in again.stderr
    assert again.stdout.strip() == first["digest"]
    assert (out / "model.onnx").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    # Another accuracy plan is another model, whatever digest the caller passes.
    other = build_model(str(gguf_path()), out, "int8", build_digest="sha256:feed", accuracy="int8")
    assert other["digest"] != first["digest"]
    assert json.loads((out / "config.json").read_text())["accuracy"]["plan"] == "int8"


def test_model_wait_sees_the_build_digest(tmp_path: Path) -> None:
    out = tmp_path / "m"
    waiter = subprocess.Popen(
        [
            *LLMCHAIN,
            "model",
            "wait",
            "--dir",
            str(out),
            "--digest",
            "sha256:cafe",
            "--timeout",
            "120",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    build_model(str(gguf_path()), out, "int8", build_digest="sha256:cafe")
    assert waiter.wait(timeout=60) == 0
    late = subprocess.run(
        [
            *LLMCHAIN,
            "model",
            "wait",
            "--dir",
            str(out),
            "--digest",
            "sha256:other",
            "--timeout",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert late.returncode == 1
    assert "sha256:other" in late.stderr


def test_progress_is_shown(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *LLMCHAIN,
            "model",
            "build",
            "--source",
            str(gguf_path()),
            "--quantization",
            "int4",
            "--out",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert "converted layer 30/30" in result.stderr
    assert "writing model.onnx" in result.stderr


def test_url_download_is_checked_cached_and_built(tmp_path: Path, files: ModelFileServer) -> None:
    cache = tmp_path / "cache"
    url = f"{files.url}/model.gguf"
    manifest = build_model(url, tmp_path / "m", "int4", sha256=GGUF_SHA256, cache_dir=cache)
    assert manifest["source"]["uri"] == url
    assert (cache / f"sha256-{GGUF_SHA256}").is_file()
    before = files.requests
    build_model(url, tmp_path / "m2", "int4", sha256=GGUF_SHA256, cache_dir=cache)
    assert files.requests == before  # the second build (another replica) reused the download


def test_an_interrupted_download_resumes(tmp_path: Path, files: ModelFileServer) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    partial = cache / f"sha256-{GGUF_SHA256}.partial"
    partial.write_bytes(files.data[:1_000_000])
    fetched = fetch(f"{files.url}/model.gguf", GGUF_SHA256, cache)
    path = fetched.path
    assert fetched.sha256 == GGUF_SHA256
    assert files.ranges[-1] == "bytes=1000000-"
    assert path.read_bytes() == files.data
    assert not partial.exists()


def test_a_truncated_download_is_an_error_and_never_used(
    tmp_path: Path, files: ModelFileServer
) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(FetchError, match=r"truncated|broke off"):
        build_model(
            f"{files.url}/truncated.gguf",
            tmp_path / "m",
            "int4",
            sha256=GGUF_SHA256,
            cache_dir=cache,
        )
    assert not (tmp_path / "m").exists()
    assert not (cache / f"sha256-{GGUF_SHA256}").exists()


def test_a_wrong_checksum_is_an_error(tmp_path: Path, files: ModelFileServer) -> None:
    with pytest.raises(
        FetchError, match=f"checksum mismatch.*expected sha256 {'0' * 64}, got {GGUF_SHA256}"
    ):
        build_model(
            f"{files.url}/model.gguf",
            tmp_path / "m",
            "int4",
            sha256="0" * 64,
            cache_dir=tmp_path / "cache",
        )
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]
    assert not (tmp_path / "m").exists()


def test_a_file_that_is_not_gguf_is_named(tmp_path: Path, files: ModelFileServer) -> None:
    with pytest.raises(BuildError, match="is not a GGUF file"):
        build_model(f"{files.url}/notes.txt", tmp_path / "m", "int4", cache_dir=tmp_path / "cache")


def test_a_truncated_local_gguf_is_named(tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(gguf_path().read_bytes()[:5_000_000])
    with pytest.raises(BuildError, match=r"cut\.gguf is not a readable GGUF file"):
        build_model(str(cut), tmp_path / "m", "int4")


def test_an_unreachable_url_is_named(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/model.gguf"
    with pytest.raises(FetchError, match=f"cannot reach {url}"):
        build_model(url, tmp_path / "m", "int4", cache_dir=tmp_path / "cache")


def test_a_missing_file_on_the_server_is_named(tmp_path: Path, files: ModelFileServer) -> None:
    with pytest.raises(FetchError, match="HTTP 404"):
        build_model(f"{files.url}/gone.gguf", tmp_path / "m", "int4", cache_dir=tmp_path / "cache")


def test_credentials_in_a_url_are_not_recorded(tmp_path: Path, files: ModelFileServer) -> None:
    url = files.url.replace("http://", "http://user:s3cret@") + "/model.gguf?token=abc"
    manifest = build_model(
        url, tmp_path / "m", "int4", sha256=GGUF_SHA256, cache_dir=tmp_path / "cache"
    )
    text = (tmp_path / "m" / "manifest.json").read_text()
    assert "s3cret" not in text and "token=abc" not in text
    assert manifest["source"]["uri"] == f"{files.url}/model.gguf"
    assert files.authorizations[-1] == "Basic dXNlcjpzM2NyZXQ="  # user:s3cret, sent as a header


def test_a_folder_that_is_not_a_model_is_never_replaced(tmp_path: Path) -> None:
    data = tmp_path / "mydata"
    data.mkdir()
    (data / "notes.txt").write_text("keep me")
    with pytest.raises(BuildError, match="exists and is not a model folder"):
        build_model(str(gguf_path()), data, "int4")
    assert (data / "notes.txt").read_text() == "keep me"


def test_an_onnx_folder_source_is_copied_as_built(
    tmp_path: Path, model_dirs: Callable[[str], Path]
) -> None:
    built = model_dirs("int4")
    manifest = build_model(str(built), tmp_path / "copy", "int4")
    assert manifest["source"]["kind"] == "onnx"
    assert manifest["digest"] == verify(built)["digest"]
    with pytest.raises(BuildError, match="holds a 'int4' model; it is served as built"):
        build_model(str(built), tmp_path / "other", "int8")
    with pytest.raises(BuildError, match="'recommended' accuracy plan; it is served as built"):
        build_model(str(built), tmp_path / "exact", "int4", accuracy="exact")


def test_fp_builds_record_no_accuracy_plan(model_dirs: Callable[[str], Path]) -> None:
    config = json.loads((model_dirs("fp16") / "config.json").read_text())
    assert config["accuracy"] is None


def test_a_tampered_folder_fails_verification(tmp_path: Path) -> None:
    out = tmp_path / "m"
    build_model(str(gguf_path()), out, "int8")
    with (out / "tokenizer.json").open("r+b") as f:
        f.seek(100)
        f.write(b"#")
    with pytest.raises(ValueError, match=r"tokenizer\.json does not match its checksum"):
        verify(out)
