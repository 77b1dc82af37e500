"""Qwen2-VL's chat markup: the tokens that open and end a turn, defined once for every module."""

TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>"
TEXT_END = "<|endoftext|>"
# Either ends a model's answer: a chat turn closes with TURN_END, a model may also stop at TEXT_END.
END_OF_TURN_TOKENS: tuple[str, ...] = (TURN_END, TEXT_END)
