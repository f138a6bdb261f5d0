"""The model folder's typed reader (model/folder.py): what the build writes reads back as written,
a bad folder is refused with the file and the field named, and the engine reads folders without
loading the builder (no onnx, no gguf)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmchain_server.engine import Engine, EngineSettings
from llmchain_server.model.architecture import LlamaConfig
from llmchain_server.model.folder import (
    CONFIG,
    DEFAULT_GENERATION,
    MODEL,
    TOKENIZER,
    AccuracyPlan,
    FolderError,
    GenerationDefaults,
    ModelConfig,
    SpecialTokens,
    open_folder,
    read_config,
)
from llmchain_server.model.manifest import MANIFEST, write_manifest

SHAPE = LlamaConfig(30, 576, 1536, 9, 3, 49152, 8192, 1e5, 1e-5, True)
CONFIG_INT4 = ModelConfig(
    model=SHAPE,
    quantization="int4",
    special=SpecialTokens(bos_id=1, bos="<s>", eos="</s>", add_bos=False, eos_ids=(0, 2)),
    accuracy=AccuracyPlan("recommended", {"qkv": "dense", "lm_head": "int8"}),
    generation=GenerationDefaults(max_tokens=64, temperature=0.6, top_p=0.9, top_k=0),
)
BUILDER_MODULES = [
    "onnx",
    "gguf",
    "llmchain_server.model.build",
    "llmchain_server.model.convert",
    "llmchain_server.model.graph",
    "llmchain_server.model.weights",
    "llmchain_server.model.gguf_source",
    "llmchain_server.model.hf_source",
    "llmchain_server.model.fetch",
    "llmchain_server.model.tokenizer_build",
    "llmchain_server.model.accuracy",
]


def folder_with(tmp_path: Path, config: dict[str, object], files: tuple[str, ...] = ()) -> Path:
    """A folder shaped like a build's: the given config.json, stand-in model and tokenizer
    files, and a manifest over them."""
    (tmp_path / CONFIG).write_text(json.dumps(config))
    for name in (MODEL, TOKENIZER, *files):
        (tmp_path / name).write_text(f"stand-in {name}\n")
    write_manifest(
        tmp_path,
        source={"kind": "gguf", "sha256": "sha256:" + "0" * 64},
        quantization=str(config.get("quantization")),
        build_digest=None,
        parameters=1,
    )
    return tmp_path


def test_importing_the_engine_loads_no_builder() -> None:
    code = "import json, sys, llmchain_server.engine; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout))
    assert "llmchain_server.model.folder" in loaded
    assert sorted(loaded.intersection(BUILDER_MODULES)) == []


def test_config_reads_back_as_the_build_wrote_it(tmp_path: Path) -> None:
    CONFIG_INT4.write(tmp_path)
    assert read_config(tmp_path) == CONFIG_INT4
    assert read_config(tmp_path).quantized


def test_generation_defaults_fill_what_a_config_leaves_out(tmp_path: Path) -> None:
    config = {"model": SHAPE.to_json(), "quantization": "fp16", "generation": {"topK": 40}}
    (tmp_path / CONFIG).write_text(json.dumps(config))
    read = read_config(tmp_path)
    assert read.generation == GenerationDefaults(top_k=40)
    assert read.special == SpecialTokens() and read.accuracy is None and not read.quantized
    del config["generation"]
    (tmp_path / CONFIG).write_text(json.dumps(config))
    assert read_config(tmp_path).generation == DEFAULT_GENERATION


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": {**SHAPE.to_json(), "layers": "30"}}, "model.layers must be an integer, not"),
        ({"model": {**SHAPE.to_json(), "heads": 7}}, "model: hidden size 576 is not a multiple"),
        ({"model": None}, "model is missing"),
        ({"quantization": "int3"}, "quantization 'int3' is not one of"),
        ({"eosTokenIds": [2, "x"]}, "eosTokenIds must be a list of integers"),
        ({"generation": {"temperature": "hot"}}, "generation.temperature must be a number"),
        ({"accuracy": {"plan": "recommended"}}, "accuracy.modes is missing"),
        ({"addBos": "yes"}, "addBos must be true or false"),
    ],
)
def test_a_bad_config_names_the_file_and_the_field(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    (tmp_path / CONFIG).write_text(json.dumps({**CONFIG_INT4.to_json(), **change}))
    with pytest.raises(FolderError, match=f"{CONFIG}: ") as raised:
        read_config(tmp_path)
    assert message in str(raised.value)


def test_a_config_that_is_not_json_or_missing_says_so(tmp_path: Path) -> None:
    with pytest.raises(FolderError, match=r"config\.json is missing"):
        read_config(tmp_path)
    (tmp_path / CONFIG).write_text("{not json")
    with pytest.raises(FolderError, match=r"config\.json is not valid JSON"):
        read_config(tmp_path)
    (tmp_path / CONFIG).write_text("[]")
    with pytest.raises(FolderError, match=r"config\.json must be a JSON object"):
        read_config(tmp_path)


def test_open_folder_checks_the_manifest_then_reads_the_rest(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, CONFIG_INT4.to_json(), files=("chat_template.jinja",))
    model = open_folder(folder)
    assert model.config == CONFIG_INT4
    assert model.manifest.quantization == "int4" and model.manifest.digest.startswith("sha256:")
    assert set(model.manifest.files) == {CONFIG, MODEL, TOKENIZER, "chat_template.jinja"}
    assert (model.model, model.tokenizer) == (folder / MODEL, folder / TOKENIZER)
    assert model.chat_template == "stand-in chat_template.jinja\n"

    (folder / TOKENIZER).write_text("stand-in tokenizer.jsoN\n")  # same size, other bytes
    open_folder(folder, verify_checksums=False)
    with pytest.raises(FolderError, match=r"tokenizer\.json does not match its checksum"):
        open_folder(folder)


def test_open_folder_names_a_missing_or_bad_manifest(tmp_path: Path) -> None:
    with pytest.raises(FolderError, match=f"{tmp_path} has no valid {MANIFEST}"):
        open_folder(tmp_path)
    folder = folder_with(tmp_path, CONFIG_INT4.to_json())
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"][MODEL]["bytes"] = "many"
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(FolderError, match=r"manifest\.json: files\.model\.onnx\.bytes must be an"):
        open_folder(folder)
    del manifest["files"][TOKENIZER]
    manifest["files"][MODEL]["bytes"] = (folder / MODEL).stat().st_size
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(FolderError, match=r"manifest\.json lists no tokenizer\.json"):
        open_folder(folder)


def test_the_engine_refuses_a_bad_folder_before_loading_a_model(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, {**CONFIG_INT4.to_json(), "model": {"layers": 30}})
    with pytest.raises(FolderError, match=r"config\.json: model\.hidden is missing"):
        Engine(folder, EngineSettings(provider="cpu"))
