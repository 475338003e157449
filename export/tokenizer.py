"""Offline stand-in for the Covo-Audio-Chat tokenizer.

Covo-Audio-Chat ships a Qwen2.5 byte-level BPE tokenizer plus audio special
tokens. The real vocabulary cannot be downloaded here, so this module trains a
tiny BPE on an embedded corpus and pads it out so that every id matches the
release layout: ordinary tokens 0..151642, Qwen2.5 specials from 151643, and the
Covo audio tokens from 151665. Exporters and the random-weight test model can
then use the true special-token ids and embedding size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from covo_edge.runtime.prompt import SYSTEM_PROMPT

__all__ = ["SPECIAL_TOKENS", "VOCAB_SIZE_TEXT", "write_tokenizer"]

VOCAB_SIZE_TEXT = 151643
"""Number of ordinary BPE ids (0..151642), as in Qwen2.5."""

SPECIAL_TOKENS: list[tuple[int, str]] = [
    (151643, "<|endoftext|>"),
    (151644, "<|im_start|>"),
    (151645, "<|im_end|>"),
    (151646, "<|object_ref_start|>"),
    (151647, "<|object_ref_end|>"),
    (151648, "<|box_start|>"),
    (151649, "<|box_end|>"),
    (151650, "<|quad_start|>"),
    (151651, "<|quad_end|>"),
    (151652, "<|vision_start|>"),
    (151653, "<|vision_end|>"),
    (151654, "<|vision_pad|>"),
    (151655, "<|image_pad|>"),
    (151656, "<|video_pad|>"),
    (151657, "<tool_call>"),
    (151658, "</tool_call>"),
    (151659, "<|fim_prefix|>"),
    (151660, "<|fim_middle|>"),
    (151661, "<|fim_suffix|>"),
    (151662, "<|fim_pad|>"),
    (151663, "<|repo_name|>"),
    (151664, "<|file_sep|>"),
    # Covo-Audio additions.
    (151665, "<|begofcAUDIO|>"),
    (151666, "<|cAUDIO|>"),
    (151667, "<|endofcAUDIO|>"),
    # The release has three more added tokens at these ids; their real names are
    # unknown to us, so they are placeholders that only reserve the ids.
    (151668, "<|covo_reserved_0|>"),
    (151669, "<|covo_reserved_1|>"),
    (151670, "<|covo_reserved_2|>"),
]


_QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_CORPUS: tuple[str, ...] = (
    SYSTEM_PROMPT,
    "Good morning! Did you sleep well last night?",
    "I usually drink a cup of coffee before I start working.",
    "The weather is lovely today, so let's take a walk in the park.",
    "Could you remind me to buy milk, eggs and bread after work?",
    "My sister is learning to play the piano, and she practices every evening.",
    "The train to Shanghai leaves at 8:45, so we should get to the station early.",
    "What's your favourite movie? I've watched this one three times already.",
    "Please turn down the music a little; the baby is sleeping.",
    "We're planning a trip to the mountains next weekend.",
    "It took me 20 minutes to find a parking space downtown.",
    "He doesn't like spicy food, but he'll try the noodles anyway.",
    "Remember to water the plants while I'm away on holiday.",
    "The library opens at nine o'clock and closes at six.",
    "Thanks for your help yesterday, I really appreciate it!",
    "How much does a ticket to the museum cost these days?",
    "The kids are playing football in the backyard.",
    "I forgot my umbrella, and now it's raining heavily.",
    "Let me check my calendar and get back to you tomorrow.",
    "Cooking dinner together is a nice way to end a busy day.",
    "Hello, Covo! Can you tell me a short, funny story?",
    "早上好！今天的天气真不错，适合出去散步。",
    "我每天早上都会喝一杯热茶，然后开始工作。",
    "周末我们打算去爬山，你要不要一起来？",
    "这家餐厅的饺子特别好吃，价格也很实惠。",
    "请帮我设置一个明天早上七点的闹钟。",
    "我的妹妹正在学习弹钢琴，她每天晚上都练习。",
    "地铁站离我家不远，走路大概十分钟就到了。",
    "最近工作有点忙，不过周末可以好好休息一下。",
    "你喜欢看什么样的电影？我最喜欢喜剧片。",
    "外面下雨了，出门记得带伞。",
    "超市里的水果很新鲜，我买了一些苹果和香蕉。",
    "孩子们在公园里放风筝，玩得非常开心。",
    "谢谢你昨天的帮助，我真的很感激。",
    "今天晚上我们一起做饭吧，我来准备蔬菜。",
    "图书馆早上九点开门，晚上六点关门。",
    "小腾，你能给我讲一个有趣的小故事吗？",
    "我想学习一门新的语言，你有什么建议吗？",
    "这本书我已经看了三遍了，每次都有新的收获。",
    "明天要早起赶飞机，今晚得早点睡觉。",
    "Mixing languages is common: 我们 meet at 3 点, OK?",
    "Prices: $12.50, ¥88, €9.99 — and 100% worth it.",
    "Line one\nLine two\r\n\tIndented line three.",
)


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte alphabet in its canonical order, so ids 0..255 match Qwen2's."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in printable] + [chars[b] for b in range(256) if b not in printable]


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )


def _train_merges(bpe_vocab_size: int) -> list[tuple[str, str]]:
    """Learn merges on the embedded corpus; the trainer breaks ties by count then pair, so this is deterministic."""
    scratch = Tokenizer(models.BPE())
    scratch.normalizer = normalizers.NFC()
    scratch.pre_tokenizer = _pre_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    scratch.train_from_iterator(_CORPUS, trainer=trainer)
    merges = json.loads(scratch.to_str())["model"]["merges"]
    return [(a, b) for a, b in merges]


def _build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Lay out ids like Qwen2: bytes first, then merge results in merge order, then fillers up to VOCAB_SIZE_TEXT."""
    vocab: dict[str, int] = {}
    for token in _bytes_to_unicode():
        vocab[token] = len(vocab)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    if len(vocab) > VOCAB_SIZE_TEXT:
        raise ValueError(f"trained vocab ({len(vocab)}) exceeds {VOCAB_SIZE_TEXT}")
    # Fillers mix letters and digits in one piece; the Qwen2 split regex always
    # separates digits from letters, so merges can never produce them.
    n = 0
    while len(vocab) < VOCAB_SIZE_TEXT:
        filler = f"\u0120fill{n:06d}x"
        if filler in vocab:
            raise AssertionError(f"filler {filler!r} collides with a trained token")
        vocab[filler] = len(vocab)
        n += 1
    return vocab


def _build_tokenizer(bpe_vocab_size: int) -> tuple[Tokenizer, dict[str, int], list[tuple[str, str]]]:
    merges = _train_merges(bpe_vocab_size)
    vocab = _build_vocab(merges)
    tok = Tokenizer(
        models.BPE(
            vocab,
            merges,
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
            ignore_merges=False,
        )
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = _pre_tokenizer()
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.add_special_tokens(
        [AddedToken(content, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)
         for _, content in SPECIAL_TOKENS]
    )
    for expected_id, content in SPECIAL_TOKENS:
        actual = tok.token_to_id(content)
        if actual != expected_id:
            raise AssertionError(f"{content} got id {actual}, expected {expected_id}")
    if tok.get_vocab_size(with_added_tokens=True) != SPECIAL_TOKENS[-1][0] + 1:
        raise AssertionError("unexpected total vocabulary size")
    return tok, vocab, merges


# Qwen2.5-Instruct's template without the tool-calling branches, defaulting to
# the Covo system prompt instead of Qwen's.
_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def _chat_template() -> str:
    """Inline the default system prompt so the template needs no extra render kwargs."""
    return "{%- set default_system = " + json.dumps(SYSTEM_PROMPT, ensure_ascii=False) + " %}" + _CHAT_TEMPLATE


def _added_token_entry(content: str) -> dict[str, object]:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}


def _tokenizer_config() -> dict[str, object]:
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): _added_token_entry(c) for i, c in SPECIAL_TOKENS},
        "additional_special_tokens": [c for _, c in SPECIAL_TOKENS[1:]],
        "bos_token": None,
        "chat_template": _chat_template(),
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def _special_tokens_map() -> dict[str, object]:
    return {
        "additional_special_tokens": [c for _, c in SPECIAL_TOKENS[1:]],
        "eos_token": _added_token_entry("<|im_end|>"),
        "pad_token": _added_token_entry("<|endoftext|>"),
    }


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def write_tokenizer(out_dir: str | os.PathLike[str], *, bpe_vocab_size: int = 4096) -> None:
    """Write tokenizer.json, tokenizer_config.json, vocab.json, merges.txt, special_tokens_map.json, added_tokens.json into out_dir.

    ``bpe_vocab_size`` caps the trained part of the vocabulary (bytes + merges);
    the rest of 0..151642 is filler so the id layout matches Covo-Audio-Chat.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok, vocab, merges = _build_tokenizer(bpe_vocab_size)
    tok.save(str(out / "tokenizer.json"), pretty=False)
    _write_json(out / "tokenizer_config.json", _tokenizer_config())
    _write_json(out / "special_tokens_map.json", _special_tokens_map())
    _write_json(out / "added_tokens.json", {c: i for i, c in sorted(SPECIAL_TOKENS, key=lambda t: t[1])})
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
