"""What ``POST /v1/chat`` runs: one image (bytes, optional) + chat messages -> the reply, whole or streamed.

The route owns HTTP (body limits, auth, queueing in the model thread, the JSON error shape); this function owns
the chat: it decodes the image through ``toklip.data.preprocess.load_image`` (the format allowlist and pixel limit
every image toklip opens passes; its typed errors are the server's 415/413/400 mapping), checks the messages
against :class:`ChatLimits`, places the image in front of the first user message, and generates. Bad input is a
:class:`~toklip.core.errors.InputError` naming the field (a 4xx), never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from toklip.core.errors import InputError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatLimits:
    """Per-request limits of the chat endpoint (the server's settings fill them)."""

    max_messages: int = 32
    max_chars: int = 16_000  # all message text together
    max_new_tokens: int = 512  # the most a request may ask for
    default_new_tokens: int = 128
    max_image_pixels: int = 64_000_000


def check_messages(messages: Any, limits: ChatLimits, image_token: str) -> list[dict[str, str]]:
    """``[{"role", "content"}]``: known roles, strings, within the limits, ending with a user turn, and no image
    placeholder of their own (the server places the image)."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise InputError("messages must be a non-empty list of {\"role\", \"content\"} objects")
    if len(messages) > limits.max_messages:
        raise InputError(f"messages has {len(messages)} entries; the limit is {limits.max_messages}")
    out, chars = [], 0
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or set(m) - {"role", "content"}:
            raise InputError(f"messages[{i}] must be an object with exactly 'role' and 'content'")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise InputError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise InputError(f"messages[{i}].content must be a string")
        if image_token in content:
            raise InputError(f"messages[{i}].content contains {image_token!r}; send the image as the request's image "
                             "and the server places it")
        chars += len(content)
        out.append({"role": role, "content": content})
    if chars > limits.max_chars:
        raise InputError(f"the messages hold {chars} characters; the limit is {limits.max_chars}")
    if out[-1]["role"] != "user":
        raise InputError("the last message must be the user's (the reply is the assistant's next turn)")
    return out


def chat_reply(vlm: Any, image: bytes | None, messages: Any, limits: ChatLimits = ChatLimits(), *,
               max_new_tokens: int | None = None, temperature: float = 0.0, stream: bool = False) -> str | Iterator[str]:
    """The assistant's reply to ``messages`` about ``image`` (None: text only); an iterator of text pieces when
    ``stream``. Greedy unless ``temperature`` > 0."""
    from toklip.data.preprocess import load_image

    turns = check_messages(messages, limits, vlm.config.image_token)
    n = limits.default_new_tokens if max_new_tokens is None else max_new_tokens
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= limits.max_new_tokens:
        raise InputError(f"max_new_tokens must be an integer in 1..{limits.max_new_tokens}, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
        raise InputError(f"temperature must be a number in [0, 2], got {temperature!r}")
    images: list[Any] = []
    if image is not None:
        if not isinstance(image, (bytes, bytearray)) or not image:
            raise InputError("image must be the bytes of one image file")
        images = [vlm.to_pixels(load_image(bytes(image), max_pixels=limits.max_image_pixels, name="image"))]
        first = next(i for i, t in enumerate(turns) if t["role"] == "user")
        turns[first] = {"role": "user", "content": f"{vlm.config.image_token}\n{turns[first]['content']}"}
    options: dict[str, Any] = {"max_new_tokens": n}
    options.update({"do_sample": True, "temperature": float(temperature)} if temperature > 0 else {"do_sample": False})
    if stream:
        return vlm.stream([turns], [images], **options)
    return vlm.generate([turns], [images], **options)[0]
