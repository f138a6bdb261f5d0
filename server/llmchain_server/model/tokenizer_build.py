"""A `tokenizer.json` (Hugging Face `tokenizers`) from the vocabulary a GGUF file carries."""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from llmchain_server.model.gguf_source import GGUFVocab

# llama.cpp's token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
_SPECIAL_TYPES = {3, 4}

# GGUF `tokenizer.ggml.pre` names whose pre-tokenization we reproduce. All split like GPT-2's
# byte-level regex; some split digits one by one first (as llama.cpp does for them).
_PRE_TOKENIZERS: dict[str, bool] = {
    "default": False,
    "gpt2": False,
    "smollm": True,
    "starcoder": True,
    "refact": True,
}


def tokenizer_from_gguf(vocab: GGUFVocab) -> Tokenizer:
    if vocab.model != "gpt2":
        raise ValueError(
            f"tokenizer model {vocab.model!r} is not supported (only byte-level BPE, 'gpt2')"
        )
    if vocab.pre not in _PRE_TOKENIZERS:
        known = ", ".join(sorted(_PRE_TOKENIZERS))
        raise ValueError(f"pre-tokenizer {vocab.pre!r} is not supported (known: {known})")
    ids = {token: i for i, token in enumerate(vocab.tokens)}
    merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
    bpe = models.BPE(vocab=ids, merges=merges, fuse_unk=False)  # type: ignore[arg-type]
    tokenizer = Tokenizer(bpe)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if _PRE_TOKENIZERS[vocab.pre]:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    special = [
        AddedToken(token, special=True, normalized=False)
        for token, kind in zip(vocab.tokens, vocab.token_types, strict=True)
        if kind in _SPECIAL_TYPES
    ]
    tokenizer.add_special_tokens(special)
    return tokenizer
