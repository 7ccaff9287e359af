"""Conversations -> token ids, labels and padded batches, with ``<image>`` placeholders expanded.

Turns are rendered with the LLM tokenizer's own chat template (``template="chat"``; a tokenizer without one gets
:data:`SIMPLE_CHAT_TEMPLATE`, ``role: text`` lines) or LLaVA's stage-1 ``plain`` layout (the user turn's image
placeholders only, then the caption and end of sequence: the model learns to caption from the image alone). Labels are -100 everywhere except the assistant's replies
(and the template's end-of-turn after them): the character span of each reply is found by rendering the
conversation up to that reply with and without it, and tokens are matched to spans through the fast
tokenizer's offsets, so no template needs special-casing. Each ``<image>`` becomes ``num_image_tokens``
copies of the image token id; the model later fills those positions with ``masked_scatter``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from toklip.core.errors import InputError

IGNORE_INDEX = -100
IMAGE_TOKEN = "<image>"
Template = Literal["chat", "plain"]
TEMPLATES = ("chat", "plain")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass
class Encoded:
    """One sample: ``input_ids`` and ``labels`` [L] (image positions expanded), and how many images it holds."""

    input_ids: Tensor
    labels: Tensor
    num_images: int


def normalize_messages(conversation: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """LLaVA's ``{"from": "human"|"gpt", "value"}`` or the chat ``{"role", "content"}`` form -> the chat form."""
    out = []
    for i, turn in enumerate(conversation):
        if not isinstance(turn, Mapping):
            raise InputError(f"conversation turn {i} must be an object, got {type(turn).__name__}")
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if role not in _ROLES:
            raise InputError(f"conversation turn {i}: unknown role {role!r} (expected one of {sorted(_ROLES)})")
        if not isinstance(content, str):
            raise InputError(f"conversation turn {i}: the text must be a string, got {type(content).__name__}")
        out.append({"role": _ROLES[role], "content": content})
    if not out:
        raise InputError("the conversation is empty")
    return out


def image_token_id(tokenizer: Any, image_token: str = IMAGE_TOKEN) -> int:
    """The id of ``image_token`` in the tokenizer, added as a special token when missing (never split, skipped
    when decoding with ``skip_special_tokens``).

    The id is only ever a marker in ``input_ids``: its positions are replaced by image features before the
    embedding layer sees them, so the LLM's embeddings are never resized."""
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([image_token], special_tokens=True)
    return int(tokenizer.convert_tokens_to_ids(image_token))


# The fallback for tokenizers without a chat template (e.g. one trained locally with `tokenizers`): one
# "role: text" line per turn, each reply closed by the end-of-sequence token so the model learns to stop.
SIMPLE_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give a tokenizer without a chat template :data:`SIMPLE_CHAT_TEMPLATE`; True when it had to."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = SIMPLE_CHAT_TEMPLATE
    return True


def _reply_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of every assistant reply in it."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise InputError("this tokenizer's chat template does not render a conversation as a prefix of its "
                             "continuation, so replies cannot be located for the labels; use template='plain'")
        spans.append((len(before), len(upto)))
    return full, spans


def _plain_user(content: str, image_token: str) -> str:
    return image_token * content.count(image_token)


def _plain(tokenizer: Any, messages: list[dict[str, str]], image_token: str) -> tuple[str, list[tuple[int, int]]]:
    """LLaVA's ``plain`` template: each user turn reduced to its image placeholders, each reply then end-of-text."""
    eos = tokenizer.eos_token or ""
    text, spans = "", []
    for m in messages:
        if m["role"] == "assistant":
            start = len(text)
            text += m["content"] + eos
            spans.append((start, len(text)))
        elif m["role"] == "user":
            text += _plain_user(m["content"], image_token)
    return text, spans


def encode_conversation(tokenizer: Any, conversation: Sequence[Mapping[str, Any]], *, num_image_tokens: int,
                        image_token: str = IMAGE_TOKEN, template: Template = "chat",
                        add_generation_prompt: bool = False) -> Encoded:
    """Token ids and labels of one conversation (a prompt for generation with ``add_generation_prompt``)."""
    messages = normalize_messages(conversation)
    image_id = image_token_id(tokenizer, image_token)
    if template not in TEMPLATES:
        raise InputError(f"template must be one of {TEMPLATES}, got {template!r}")
    if add_generation_prompt:
        if template == "plain":
            text = "".join(_plain_user(m["content"], image_token) for m in messages if m["role"] == "user")
        else:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        spans: list[tuple[int, int]] = []
    elif template == "chat":
        text, spans = _reply_spans(tokenizer, messages)
    else:
        text, spans = _plain(tokenizer, messages, image_token)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = [], []
    for tok, (start, _end) in zip(enc["input_ids"], enc["offset_mapping"]):
        trained = any(a <= start < b for a, b in spans)
        if tok == image_id:
            if trained:
                raise InputError(f"an assistant reply contains {image_token!r}; images go in user turns")
            ids += [image_id] * num_image_tokens
            labels += [IGNORE_INDEX] * num_image_tokens
        else:
            ids.append(tok)
            labels.append(tok if trained else IGNORE_INDEX)
    num_images = sum(1 for t in enc["input_ids"] if t == image_id)
    return Encoded(torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long), num_images)


def pad_batch(samples: Sequence[Encoded], *, pad_id: int, padding_side: str = "right",
              max_length: int | None = None) -> dict[str, Tensor]:
    """Stack samples into ``input_ids``, ``attention_mask`` and ``labels`` [B, L] (labels -100 on padding).

    Right padding for training, left padding for batched generation (new tokens follow the last real one)."""
    if padding_side not in ("left", "right"):
        raise InputError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not samples:
        raise InputError("cannot pad an empty batch")
    length = max(len(s.input_ids) for s in samples)
    if max_length is not None and length > max_length:
        raise InputError(f"a sample is {length} tokens long (image tokens included); the limit is {max_length}")
    ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(samples), length), dtype=torch.long)
    for i, s in enumerate(samples):
        n = len(s.input_ids)
        cols = slice(length - n, length) if padding_side == "left" else slice(0, n)
        ids[i, cols], labels[i, cols], mask[i, cols] = s.input_ids, s.labels, 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
