"""The offline tokenizer must reproduce Covo-Audio-Chat's id layout and round-trip text losslessly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs
from tokenizers import Tokenizer

from covo_edge.export.tokenizer import SPECIAL_TOKENS, VOCAB_SIZE_TEXT, write_tokenizer
from covo_edge.runtime.prompt import SYSTEM_PROMPT

FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
)

AUDIO_PROMPT = (
    "<|im_start|>system\n"
    + SYSTEM_PROMPT
    + "<|im_end|>\n<|im_start|>user\n<|begofcAUDIO|>"
    + "<|cAUDIO|>" * 7
    + "<|endofcAUDIO|><|im_end|>\n<|im_start|>assistant\n"
)

UNICODE_TEXTS = (
    "Héllo wörld! Ω≈ç√ ∑∫ naïve façade",
    "🎉👩‍👩‍👧 emoji 🇨🇳 flags and 🧪 tests",
    "日本語のテキスト、한국어 텍스트, русский текст, العربية",
    "tabs\t\tand  spaces   \n\n\r\nnew lines  ",
    "  leading and trailing spaces  ",
    "control \x00\x01\x7f bytes and numbers 1234567890",
    "<|not_a_special|> <tool> inside text",
)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok")
    write_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def tok(out_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(out_dir / "tokenizer.json"))


def test_writes_all_files(out_dir: Path) -> None:
    for name in FILES:
        assert (out_dir / name).is_file(), name


def test_special_token_ids(tok: Tokenizer, out_dir: Path) -> None:
    assert [i for i, _ in SPECIAL_TOKENS] == list(range(VOCAB_SIZE_TEXT, VOCAB_SIZE_TEXT + len(SPECIAL_TOKENS)))
    for token_id, content in SPECIAL_TOKENS:
        assert tok.token_to_id(content) == token_id
        assert tok.id_to_token(token_id) == content
    assert tok.get_vocab_size(with_added_tokens=True) == 151671
    assert tok.token_to_id("<|begofcAUDIO|>") == 151665
    assert tok.token_to_id("<|cAUDIO|>") == 151666
    assert tok.token_to_id("<|endofcAUDIO|>") == 151667

    added = json.loads((out_dir / "added_tokens.json").read_text(encoding="utf-8"))
    assert added == {c: i for i, c in SPECIAL_TOKENS}
    decoder = json.loads((out_dir / "tokenizer_config.json").read_text(encoding="utf-8"))["added_tokens_decoder"]
    assert {int(i): d["content"] for i, d in decoder.items()} == dict(SPECIAL_TOKENS)
    assert all(d["special"] and not d["normalized"] for d in decoder.values())


def test_ordinary_vocab_fills_text_range(tok: Tokenizer, out_dir: Path) -> None:
    vocab = json.loads((out_dir / "vocab.json").read_text(encoding="utf-8"))
    assert sorted(vocab.values()) == list(range(VOCAB_SIZE_TEXT))
    assert vocab == tok.get_vocab(with_added_tokens=False)
    merges = (out_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2"
    assert all(a + b in vocab for a, b in (line.split(" ") for line in merges[1:]))


def test_audio_prompt_encoding(tok: Tokenizer) -> None:
    ids = tok.encode(AUDIO_PROMPT).ids
    assert ids[0] == 151644
    assert ids.count(151666) == 7
    assert max(ids) <= 151670
    assert tok.decode(ids, skip_special_tokens=False) == AUDIO_PROMPT


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_unicode_round_trip(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text).ids
    assert all(i < VOCAB_SIZE_TEXT for i in ids)
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_deterministic(tmp_path: Path) -> None:
    """Rebuild in-process and in a fresh single-threaded interpreter; every file must be byte-identical."""
    write_tokenizer(tmp_path / "a")
    write_tokenizer(tmp_path / "b")
    env = {**os.environ, "RAYON_NUM_THREADS": "1", "PYTHONHASHSEED": "12345"}
    subprocess.run(
        [sys.executable, "-c", "import sys; from covo_edge.export.tokenizer import write_tokenizer; write_tokenizer(sys.argv[1])",
         str(tmp_path / "c")],
        check=True,
        env=env, timeout=600)
    for name in FILES:
        reference = (tmp_path / "a" / name).read_bytes()
        assert (tmp_path / "b" / name).read_bytes() == reference, name
        assert (tmp_path / "c" / name).read_bytes() == reference, name


def test_transformers_agrees(out_dir: Path, tok: Tokenizer) -> None:
    transformers = needs("transformers", "export")
    hf = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    assert len(hf) == 151671
    assert hf.eos_token == "<|im_end|>" and hf.eos_token_id == 151645
    assert hf.pad_token == "<|endoftext|>" and hf.pad_token_id == 151643
    assert hf.bos_token is None
    assert hf.model_max_length == 131072
    for text in (AUDIO_PROMPT, *UNICODE_TEXTS):
        ids = hf(text)["input_ids"]
        assert ids == tok.encode(text).ids
        assert hf.decode(ids) == text


def test_chat_template_defaults_to_covo_prompt(out_dir: Path) -> None:
    transformers = needs("transformers", "export")
    hf = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    rendered = hf.apply_chat_template(
        [{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == (
        "<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n"
        "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    )
    explicit = hf.apply_chat_template(
        [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        tokenize=False,
    )
    assert explicit == "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
