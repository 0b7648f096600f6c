"""The one place the grammar-correction prompt format and special tokens are defined.

A training / inference example is, as text:

    <|bos|>Correct: <source>\nFixed: <target>\n<|eos|>
    \_____/\____________________________/\__________/\_____/
     BOS id       prompt(source)          answer()    EOS id

The runtime (FastServe) prepends BOS itself when it encodes a text prompt, so a client sends only
prompt(source) and reads the generated text, which is answer(target) when the model is right: a space,
the corrected sentence, a newline, then EOS ends the generation. The loss is taken on the answer tokens
and EOS only.
"""

PROMPT_PREFIX = "Correct: "
PROMPT_SUFFIX = "\nFixed:"

PAD = "<|pad|>"
BOS = "<|bos|>"
EOS = "<|eos|>"
# Ids are fixed: the special tokens come first in vocab.json, then the 256 byte tokens, then the merges.
SPECIAL_TOKENS = [PAD, BOS, EOS]
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


def prompt(source: str) -> str:
    """The text a client sends (without BOS): 'Correct: <source>\\nFixed:'."""
    return PROMPT_PREFIX + source + PROMPT_SUFFIX


def answer(target: str) -> str:
    """What the model must generate before EOS: ' <target>\\n'."""
    return " " + target + "\n"


def parse_answer(generated: str) -> str:
    """The corrected sentence in a generated answer: the text up to the first newline, one leading space removed."""
    text = generated.split("\n", 1)[0]
    return text[1:] if text.startswith(" ") else text
