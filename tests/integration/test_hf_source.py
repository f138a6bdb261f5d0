"""The Hugging Face folder source: a folder written from the GGUF's weights in Hugging Face's
layout (rotate-half Q/K row order, HF tensor names, `config.json`, safetensors written by the
`safetensors` library) builds to the same logits as the GGUF's fp32 build."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from llmchain_server.engine import Engine, EngineSettings
from llmchain_server.model import BuildError, build_model, verify
from llmchain_server.model.gguf_source import GGUFSource
from llmchain_server.model.hf_source import to_interleaved
from llmchain_server.model.tokenizer_build import tokenizer_from_gguf
from llmchain_server.model.weights import Floats, as_float
from tests.support.model import gguf_path

HF_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def to_rotate_half(w: Floats, heads: int) -> Floats:
    """GGUF's interleaved Q/K row order → Hugging Face's rotate-half (the inverse of the
    builder's to_interleaved, per head)."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_hf_folder(folder: Path) -> None:
    source = GGUFSource(gguf_path())
    c = source.config()
    tensors: dict[str, np.ndarray] = {}
    for name in source.names():
        w = as_float(source.weight(name))
        if name == "token_embd.weight":
            tensors["model.embed_tokens.weight"] = w
        elif name == "output_norm.weight":
            tensors["model.norm.weight"] = w
        else:
            _, layer, kind, _ = name.split(".")
            if kind == "attn_q":
                w = to_rotate_half(w, c.heads)
            elif kind == "attn_k":
                w = to_rotate_half(w, c.kv_heads)
            tensors[f"model.layers.{layer}.{HF_NAMES[kind]}.weight"] = w
    folder.mkdir()
    save_file(
        {k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / "model.safetensors")
    )
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "architectures": ["LlamaForCausalLM"],
                "num_hidden_layers": c.layers,
                "hidden_size": c.hidden,
                "intermediate_size": c.ffn,
                "num_attention_heads": c.heads,
                "num_key_value_heads": c.kv_heads,
                "vocab_size": c.vocab,
                "max_position_embeddings": c.context,
                "rope_theta": c.rope_base,
                "rms_norm_eps": c.norm_eps,
                "tie_word_embeddings": True,
                "eos_token_id": 2,
            }
        )
    )
    (folder / "generation_config.json").write_text(
        json.dumps({"do_sample": True, "temperature": 0.6, "top_p": 0.9, "eos_token_id": 2})
    )
    tokenizer_from_gguf(source.vocab()).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": source.chat_template()})
    )


def test_hf_folder_builds_to_the_gguf_fp32_logits(
    tmp_path: Path, model_dirs: Callable[[str], Path]
) -> None:
    hf = tmp_path / "hf"
    write_hf_folder(hf)
    manifest = build_model(str(hf), tmp_path / "built", "none")
    assert manifest["source"]["kind"] == "huggingface"
    verify(tmp_path / "built")
    settings = EngineSettings(provider="cpu", max_batch=1, context=128)
    ours = Engine(tmp_path / "built", settings)
    reference = Engine(model_dirs("none"), settings)
    prompt = ours.tokenizer.encode(
        ours.tokenizer.render_chat([{"role": "user", "content": "What is the capital of France?"}])
    )
    assert prompt == reference.tokenizer.encode(
        reference.tokenizer.render_chat(
            [{"role": "user", "content": "What is the capital of France?"}]
        )
    )
    a = ours.runner.prefill(0, [prompt], all_logits=True)
    b = reference.runner.prefill(0, [prompt], all_logits=True)
    np.testing.assert_allclose(a, b, atol=1e-3, rtol=0)
    # generation_config.json's sampling defaults travel into the folder; the GGUF has none.
    assert (ours.defaults.temperature, ours.defaults.top_p) == (0.6, 0.9)
    # (max tokens: 256 by default, capped at half of this engine's 128-token context)
    assert (reference.defaults.temperature, reference.defaults.max_tokens) == (0.0, 64)


def test_a_broken_hf_folder_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"model.norm.weight": np.ones(4, np.float32)}, str(folder / "model.safetensors"))
    with pytest.raises(BuildError, match=r"cannot convert .*hf: KeyError: 'num_attention_heads'"):
        build_model(str(folder), tmp_path / "built", "int4")
    base = {
        "model_type": "llama",
        "num_attention_heads": 2,
        "num_hidden_layers": 1,
        "hidden_size": 4,
        "intermediate_size": 8,
        "vocab_size": 4,
    }
    for extra, word in (
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8}}, "rope_scaling"),
        ({"attention_bias": True}, "attention_bias"),
        ({"head_dim": 4}, "head_dim"),
    ):
        (folder / "config.json").write_text(json.dumps({**base, **extra}))
        with pytest.raises(BuildError, match=f"{word}.* not supported"):
            build_model(str(folder), tmp_path / "built", "int4")
    (folder / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    with pytest.raises(BuildError, match="model_type 'mistral' is not supported"):
        build_model(str(folder), tmp_path / "built", "int4")


def test_hf_folder_in_gguf_row_order_would_not_match(tmp_path: Path) -> None:
    """The permutation matters: without it Q/K rows are in the wrong rotary order."""
    source = GGUFSource(gguf_path())
    w = as_float(source.weight("blk.0.attn_q.weight"))
    assert not np.array_equal(to_rotate_half(w, 9), w)
    assert np.array_equal(to_interleaved(to_rotate_half(w, 9), 9), w)
