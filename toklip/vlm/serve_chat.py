"""What ``POST /v1/chat`` runs: one image (bytes, optional) + chat messages -> the reply, whole or streamed.

The route owns HTTP (body limits, auth, queueing in the model thread, the JSON error shape); this module owns
the chat: it decodes the image through ``toklip.data.preprocess.load_image`` (the format allowlist and pixel limit
every image toklip opens passes; its typed errors are the server's 415/413/400 mapping), checks the messages
against :class:`ChatLimits`, places the image in front of the first user message, and generates. Bad input is a
:class:`~toklip.core.errors.InputError` naming the field (a 4xx), never a traceback.

``prepare_chat`` (the checks and the image's pixels: cheap, any thread) and ``run_chat`` (the model) are the two
halves of ``chat_reply``, so a server can refuse a request before it queues for the model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from toklip.core.errors import InputError

ROLES = ("system", "user", "assistant")
MAX_TEMPERATURE = 2.0


@dataclass(frozen=True)
class ChatLimits:
    """Per-request limits of the chat endpoint (the server's settings fill them)."""

    max_messages: int = 32
    max_chars: int = 16_000  # all message text together
    max_new_tokens: int = 512  # the most a request may ask for
    default_new_tokens: int = 128
    max_image_pixels: int = 64_000_000


class ChatInputError(InputError):
    """Bad chat input. ``field`` is the request field at fault (``messages``, ``max_new_tokens``, ``temperature``,
    ``image``); ``limit`` the :class:`ChatLimits` field it goes over, if any (a size limit, not a bad value)."""

    def __init__(self, message: str, field: str, limit: str | None = None) -> None:
        super().__init__(message)
        self.field, self.limit = field, limit


@dataclass(frozen=True)
class PreparedChat:
    """A checked request: the turns (the image placeholder placed), the image's pixels and the generate options."""

    turns: list[dict[str, str]]
    images: list[Any]  # [3, S, S] pixels in [-1, 1]; empty for text only
    options: dict[str, Any]


def check_messages(messages: Any, limits: ChatLimits, image_token: str) -> list[dict[str, str]]:
    """``[{"role", "content"}]``: known roles, strings, within the limits, ending with a user turn, and no image
    placeholder of their own (the server places the image)."""
    def bad(message: str, limit: str | None = None) -> ChatInputError:
        return ChatInputError(message, "messages", limit)

    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise bad("messages must be a non-empty list of {\"role\", \"content\"} objects")
    if len(messages) > limits.max_messages:
        raise bad(f"messages has {len(messages)} entries; the limit is {limits.max_messages}", "max_messages")
    out, chars = [], 0
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or set(m) - {"role", "content"}:
            raise bad(f"messages[{i}] must be an object with exactly 'role' and 'content'")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise bad(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise bad(f"messages[{i}].content must be a string")
        if image_token in content:
            raise bad(f"messages[{i}].content contains {image_token!r}; send the image as the request's image "
                      "and the server places it")
        chars += len(content)
        out.append({"role": role, "content": content})
    if chars > limits.max_chars:
        raise bad(f"the messages hold {chars} characters; the limit is {limits.max_chars}", "max_chars")
    if out[-1]["role"] != "user":
        raise bad("the last message must be the user's (the reply is the assistant's next turn)")
    return out


def prepare_chat(vlm: Any, image: bytes | None, messages: Any, limits: ChatLimits = ChatLimits(), *,
                 max_new_tokens: int | None = None, temperature: float = 0.0) -> PreparedChat:
    """Every check of a chat request, and the image decoded to the VLM's pixels; the model is not run."""
    from toklip.data.preprocess import load_image

    turns = check_messages(messages, limits, vlm.config.image_token)
    n = limits.default_new_tokens if max_new_tokens is None else max_new_tokens
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= limits.max_new_tokens:
        raise ChatInputError(f"max_new_tokens must be an integer in 1..{limits.max_new_tokens}, got "
                             f"{max_new_tokens!r}", "max_new_tokens")
    if (not isinstance(temperature, (int, float)) or isinstance(temperature, bool)
            or not 0 <= temperature <= MAX_TEMPERATURE):
        raise ChatInputError(f"temperature must be a number in [0, {MAX_TEMPERATURE:g}], got {temperature!r}",
                             "temperature")
    images: list[Any] = []
    if image is not None:
        if not isinstance(image, (bytes, bytearray)) or not image:
            raise ChatInputError("image must be the bytes of one image file", "image")
        images = [vlm.to_pixels(load_image(bytes(image), max_pixels=limits.max_image_pixels, name="image"))]
        first = next(i for i, t in enumerate(turns) if t["role"] == "user")
        turns[first] = {"role": "user", "content": f"{vlm.config.image_token}\n{turns[first]['content']}"}
    options: dict[str, Any] = {"max_new_tokens": n}
    options.update({"do_sample": True, "temperature": float(temperature)} if temperature > 0 else {"do_sample": False})
    return PreparedChat(turns, images, options)


def run_chat(vlm: Any, chat: PreparedChat, *, stream: bool = False, **generate_kwargs: Any) -> str | Iterator[str]:
    """Generate the reply to a prepared chat; ``generate_kwargs`` go to transformers' ``generate`` too (e.g.
    ``stopping_criteria``). Streamed pieces join to exactly the whole reply (stripped, as ``VLM.generate``)."""
    options = {**chat.options, **generate_kwargs}
    if stream:
        return _stripped(vlm.stream([chat.turns], [chat.images], **options))
    return vlm.generate([chat.turns], [chat.images], **options)[0]


def chat_reply(vlm: Any, image: bytes | None, messages: Any, limits: ChatLimits = ChatLimits(), *,
               max_new_tokens: int | None = None, temperature: float = 0.0, stream: bool = False) -> str | Iterator[str]:
    """The assistant's reply to ``messages`` about ``image`` (None: text only); an iterator of text pieces when
    ``stream``. Greedy unless ``temperature`` > 0."""
    chat = prepare_chat(vlm, image, messages, limits, max_new_tokens=max_new_tokens, temperature=temperature)
    return run_chat(vlm, chat, stream=stream)


def _stripped(pieces: Iterator[str]) -> Iterator[str]:
    """``pieces`` without the reply's leading and trailing whitespace (inner whitespace is held until text
    follows it), so a stream joins to what the whole reply is."""
    started, held = False, ""
    try:
        for piece in pieces:
            if not started:
                piece = piece.lstrip()
                if not piece:
                    continue
                started = True
            text = held + piece
            body = text.rstrip()
            held = text[len(body):]
            if body:
                yield body
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:  # a reader that stops early: join the generation thread now, not at collection
            close()
