"""Response clean-up before scoring: BiRD's ``extract_information`` and clinkd's chat-token pre-step."""

from __future__ import annotations

import re

from clinkd.chat import END_OF_TURN_TOKENS

_BETWEEN_NEWLINES = re.compile(r"\n(.*?)\n", re.DOTALL)


def extract_information(string: str) -> str:
    """BiRD's ``regularization.extract_information``, rule for rule (ClinKD ships the same copy).

    1. If ``.<|im_end|>`` occurs, keep the text before its first occurrence and append ``.``.
    2. Delete every ``<|im_end|>\\n``.
    3. If ``\\n(.*?)\\n`` (DOTALL) matches, keep only its first group (the text between the first two
       newlines).
    4. Delete every ``<|endoftext|>``, then strip.

    A bare trailing ``<|im_end|>`` survives, as in BiRD.
    """
    if ".<|im_end|>" in string:
        string = string.split(".<|im_end|>")[0] + "."
    string = string.replace("<|im_end|>\n", "")
    match = _BETWEEN_NEWLINES.search(string)
    if match:
        string = match.group(1)
    string = string.replace("<|endoftext|>", "")
    return string.strip()


def strip_chat_tokens(text: str) -> str:
    """clinkd's pre-step: cut at the first end-of-turn token, where the model's answer ends.

    Whitespace is left alone so that ``extract_information``'s newline rule sees what BiRD's sees.
    """
    for token in END_OF_TURN_TOKENS:
        text = text.split(token, 1)[0]
    return text


def clean_response(text: str, bird_exact: bool = False) -> str:
    """The response that is scored: ``extract_information``, after :func:`strip_chat_tokens` unless
    ``bird_exact``."""
    return extract_information(text if bird_exact else strip_chat_tokens(text))
