"""Incremental decoding with a SentencePiece-style (Llama 2) decoder, which strips the space of
a text's first token: a generated token after the prompt must keep its space."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models

from llmchain_server.engine.tokenizer import IncrementalDecoder, ModelTokenizer

VOCAB = {"<unk>": 0, "▁The": 1, "▁capital": 2, "▁is": 3, "▁Paris": 4, ".": 5}


def sentencepiece_tokenizer(tmp_path: Path) -> Path:
    tokenizer = Tokenizer(models.BPE(vocab=VOCAB, merges=[], unk_token="<unk>"))
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    return tmp_path / "tokenizer.json"


def test_the_first_generated_token_keeps_its_space(tmp_path: Path) -> None:
    tok = ModelTokenizer(sentencepiece_tokenizer(tmp_path))
    prompt = [1, 2, 3]  # "The capital is"
    decoder = IncrementalDecoder(tok, prompt[-4:])
    assert [decoder.push(4), decoder.push(5)] == [" Paris", "."]


def test_without_context_the_decoder_would_strip_it(tmp_path: Path) -> None:
    tok = ModelTokenizer(sentencepiece_tokenizer(tmp_path))
    assert IncrementalDecoder(tok).push(4) == "Paris"
