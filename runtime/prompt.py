"""The chat prompt around the user's audio: upstream's system prompt and turn layout
(DESIGN.md, "Numerics the runtime reproduces").

The exporter writes both into the manifest; the runtime renders turns from the manifest's copy and the
reference from this one, so the two sides build the very same ids.
"""

from __future__ import annotations

SYSTEM_PROMPT = (
    '你是"小腾"，英文名是"Covo"，由腾讯开发的AI助手。\n'
    "1、请使用简洁、口语化的语言和用户聊天，你的态度积极、耐心，像一位值得信赖的朋友。\n"
    "2、不要使用列表或编号，避免输出网址、表情符号和复杂的公式。\n"
    "3、不评价竞争对手，不发表主观政治观点，针对色情类、政治类、恐怖类、歧视类、暴力类的用户问题，"
    "你要妥善应对潜在的安全风险，并给出幽默，情绪安抚以及安全的劝导。\n"
    "请用文本和音频进行对话，交替生成5个文本token和15个音频token，音频部分使用发音人：default_female"
)
"""Covo-Audio-Chat's default system prompt: interleave 5 text tokens and 15 audio tokens, voice default_female."""

AUDIO_SLOT = "<|cAUDIO|>"  # one per adapter frame of the question


def turn_template(first_turn: bool, system: str = "{system}", audio: str = "{audio}") -> str:
    """The text of one user turn up to the assistant's answer. A later turn continues the cached history
    right after the unfed stop token, so it starts with a newline."""
    user = f"<|im_start|>user\n<|begofcAUDIO|>{audio}<|endofcAUDIO|><|im_end|>\n"
    if first_turn:
        return f"<|im_start|>system\n{system}<|im_end|>\n{user}<|im_start|>assistant\n"
    return f"\n{user}<|im_start|>assistant\n"


def turn_text(n_slots: int, first_turn: bool, system: str = SYSTEM_PROMPT) -> str:
    """One turn's prompt with `n_slots` audio placeholders."""
    return turn_template(first_turn, system, AUDIO_SLOT * n_slots)
