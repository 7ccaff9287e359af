"""Every limit and switch of the server in one typed, validated place (the CLI and tests build one)."""

from __future__ import annotations

from dataclasses import dataclass, field

from toklip.core.errors import ConfigError

OUTPUT_NAMES = ("indices", "features", "pooled")


@dataclass(frozen=True)
class ServeSettings:
    """Limits are what keeps one bad or greedy client from taking the server down; defaults suit a GPU box."""

    max_batch: int = 32  # items (images, texts or index grids) the model sees in one call
    max_wait_ms: float = 5.0  # how long the first queued item waits for others to join its batch
    max_queue: int = 256  # items waiting for the model; more -> 503 with Retry-After
    max_concurrency: int = 128  # /v1 requests in flight (bodies being read count); more -> 503
    max_request_items: int = 32  # images / texts / index grids in one request; more -> 413
    max_body_bytes: int = 32 * 1024 * 1024  # request body; more -> 413
    max_image_pixels: int = 40_000_000  # per decoded image (decompression bombs); more -> 413
    max_text_chars: int = 2_000  # per text; the tokenizer truncates to the context length anyway
    request_timeout_s: float = 60.0  # whole request, body upload included; -> 408 (slow upload) or 503
    decode_threads: int = 2  # images decoded at once (each can take max_image_pixels * 4 bytes)
    header_timeout_s: float = 10.0  # from connecting (or the end of the last response) to a complete request head
    keep_alive_timeout_s: float = 5.0  # an idle kept-alive connection is closed after this
    max_connections: int = 512  # open connections; more -> 503 + Retry-After (JSON), then closed
    max_header_bytes: int = 16 * 1024  # request line + headers; more -> 400 (JSON)
    max_generate_images: int = 16  # images one /v1/generate request may ask for (capped at max_queue); more -> 413
    max_chat_tokens: int = 512  # new tokens one /v1/chat request may ask for; more -> 422
    api_key: str | None = field(default=None, repr=False)
    cors_origins: tuple[str, ...] = ()
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        positive = {
            "max_batch": self.max_batch, "max_queue": self.max_queue, "max_concurrency": self.max_concurrency,
            "max_request_items": self.max_request_items, "max_body_bytes": self.max_body_bytes,
            "max_image_pixels": self.max_image_pixels, "max_text_chars": self.max_text_chars,
            "decode_threads": self.decode_threads, "retry_after_s": self.retry_after_s,
            "max_connections": self.max_connections, "max_header_bytes": self.max_header_bytes,
            "max_generate_images": self.max_generate_images, "max_chat_tokens": self.max_chat_tokens,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"serve setting {name} must be a positive integer, got {value!r}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"serve setting max_wait_ms must be >= 0, got {self.max_wait_ms!r}")
        for name in ("request_timeout_s", "header_timeout_s", "keep_alive_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 86_400:
                raise ConfigError(f"serve setting {name} must be > 0 seconds (and under a day), got {value!r}")
        if self.max_request_items > self.max_queue:
            raise ConfigError(
                f"max_request_items ({self.max_request_items}) is above max_queue ({self.max_queue}): "
                "such a request could never be queued; raise max_queue or lower max_request_items"
            )
        if self.api_key is not None and not self.api_key:
            raise ConfigError("the API key is empty; set a non-empty key or leave it unset")

    @property
    def generate_limit(self) -> int:
        """Images per generate request: a request larger than the queue could never be queued."""
        return min(self.max_generate_images, self.max_queue)
