"""Python client for ``toklip serve``: the server's operations with numpy arrays and PIL images.

    from toklip.serve.client import Client

    with Client("http://127.0.0.1:8000") as c:
        tok = c.tokenize(["cat.jpg"], outputs=("indices", "pooled"))   # tok.indices [1, N] int64
        images = c.decode(tok.indices)                                  # [PIL.Image]
        scores = c.similarity(["cat.jpg"], ["a cat", "a dog"]).probs     # [1, 2]

Arrays travel as safetensors (not JSON) both ways where the server allows it, and large inputs are split
into requests of the server's ``max_request_items``. Needs httpx (``pip install 'toklip[serve]'``); torch is
not imported. Errors from the server raise ``APIError`` with its HTTP status, code and message.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from toklip.core.errors import InputError
from toklip.serve.errors import APIError

__all__ = ["APIError", "Client", "Similarity", "TokenizeResult"]

ImageLike = Any  # path, bytes, PIL.Image.Image, or uint8 array [H, W(, C)]


@dataclass
class TokenizeResult:
    grid: tuple[int, int]
    vocab_size: int
    indices: np.ndarray | None = None  # [B, N] int64, raster order
    features: np.ndarray | None = None  # [B, N, D] float32
    pooled: np.ndarray | None = None  # [B, E] float32, not normalised


@dataclass
class Similarity:
    cosine: np.ndarray  # [images, texts]
    logits: np.ndarray
    probs: np.ndarray  # softmax over texts: zero-shot scores


def _image_bytes(image: ImageLike) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, Path)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise InputError(f"image file {str(image)!r} does not exist")
        return path.read_bytes()
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise InputError(f"image arrays must be uint8 pixels [H, W] or [H, W, C], got dtype {image.dtype}")
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    raise InputError(f"cannot send a {type(image).__name__} as an image (use a path, bytes, PIL image or uint8 array)")


def _load_safetensors(body: bytes) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return load(body)


class Client:
    """Synchronous client. ``retries`` re-sends a request answered 503 (queue full, busy) after Retry-After."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 2,
        max_retry_wait_s: float = 10.0,
        transport: Any = None,
    ) -> None:
        import httpx

        if retries < 0:
            raise InputError(f"retries must be >= 0, got {retries}")
        headers = {"Authorization": b"Bearer " + api_key.encode("utf-8")} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)
        self.retries, self.max_retry_wait_s = retries, max_retry_wait_s
        self._info: dict[str, Any] | None = None

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in range(self.retries + 1):
            response = self._http.request(method, path, **kwargs)
            if response.status_code == 503 and attempt < self.retries and "retry-after" in response.headers:
                try:
                    wait = float(response.headers["retry-after"])
                except ValueError:
                    wait = 1.0
                time.sleep(min(max(wait, 0.0), self.max_retry_wait_s))
                continue
            break
        if response.is_success:
            return response
        try:
            err = response.json()["error"]
            raise APIError(int(err["status"]), str(err["code"]), str(err["message"]))
        except (ValueError, KeyError, TypeError):
            raise APIError(response.status_code, "http_error", response.text[:500]) from None

    def _chunks(self, items: Sequence[Any]) -> Iterator[Sequence[Any]]:
        if not len(items):
            raise InputError("nothing to send: the list is empty")
        step = int(self.info()["limits"]["max_request_items"])
        for i in range(0, len(items), step):
            yield items[i:i + step]

    @staticmethod
    def _files(images: Sequence[ImageLike]) -> list[tuple[str, tuple[str, bytes, str]]]:
        return [("image", (f"image{i}", _image_bytes(im), "application/octet-stream")) for i, im in enumerate(images)]

    @staticmethod
    def _as_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
        if isinstance(images, (list, tuple)):
            return list(images)
        return [images]

    # ------------------------------------------------------------------ service state
    def health(self) -> bool:
        """True when the process answers /healthz."""
        return self._http.get("/healthz").status_code == 200

    def ready(self) -> bool:
        """True once the model has warmed up (/readyz)."""
        return self._http.get("/readyz").status_code == 200

    def wait_ready(self, timeout_s: float = 120.0, interval_s: float = 0.2) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.ready():
                    return
            except httpx.TransportError:
                pass
            time.sleep(interval_s)
        raise TimeoutError(f"the server at {self._http.base_url} was not ready within {timeout_s:g} s")

    def info(self) -> dict[str, Any]:
        """The model (name, image_size, grid, vocab_size, embed_dim, ...) and the server's limits."""
        if self._info is None:
            self._info = self._request("GET", "/v1/info").json()
        return self._info

    # ------------------------------------------------------------------ operations
    def tokenize(self, images: ImageLike | Sequence[ImageLike],
                 outputs: Sequence[str] = ("indices",)) -> TokenizeResult:
        """Images -> VQ indices, and on request per-token ``features`` and the ``pooled`` embedding."""
        parts: dict[str, list[np.ndarray]] = {k: [] for k in outputs}
        meta: dict[str, str] = {}
        for chunk in self._chunks(self._as_list(images)):
            response = self._request("POST", "/v1/tokenize", files=self._files(chunk),
                                     data={"outputs": ",".join(outputs), "format": "safetensors"})
            arrays = _load_safetensors(response.content)
            meta = _metadata(response.content)
            for k in outputs:
                parts[k].append(arrays[k])
        grid = tuple(int(x) for x in meta["grid"].split(","))
        result = TokenizeResult(grid=(grid[0], grid[1]), vocab_size=int(meta["vocab_size"]))
        for k, v in parts.items():
            setattr(result, k, np.concatenate(v))
        return result

    def embed_image(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
        """Images -> L2-normalised embeddings [B, E]."""
        out = [
            _load_safetensors(self._request("POST", "/v1/embed/image", files=self._files(chunk),
                                            data={"format": "safetensors"}).content)["embeddings"]
            for chunk in self._chunks(self._as_list(images))
        ]
        return np.concatenate(out)

    def embed_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """Texts -> L2-normalised embeddings [T, E]."""
        items = [texts] if isinstance(texts, str) else list(texts)
        out = [
            _load_safetensors(self._request("POST", "/v1/embed/text", json={"texts": list(chunk)},
                                            params={"format": "safetensors"}).content)["embeddings"]
            for chunk in self._chunks(items)
        ]
        return np.concatenate(out)

    def similarity(self, images: ImageLike | Sequence[ImageLike], texts: str | Sequence[str]) -> Similarity:
        """Cosine similarity, logits and zero-shot probabilities of every image against every text."""
        items = [texts] if isinstance(texts, str) else list(texts)
        rows: dict[str, list[np.ndarray]] = {"cosine": [], "logits": [], "probs": []}
        for chunk in self._chunks(self._as_list(images)):
            files = self._files(chunk)
            body = self._request("POST", "/v1/similarity", files=files, data={"texts": items}).json()
            for k in rows:
                rows[k].append(np.asarray(body[k], dtype=np.float32))
        return Similarity(**{k: np.concatenate(v) for k, v in rows.items()})

    def decode(self, indices: Any) -> list[Any]:
        """Index grids [B, N] or [B, h, w] (or one grid [N] / [h, w] with ``B`` left out) -> PIL images."""
        import base64

        from PIL import Image

        arr = np.asarray(indices)
        grid = tuple(self.info()["grid"])
        if arr.ndim == 1 or (arr.ndim == 2 and tuple(arr.shape) == grid):
            arr = arr[None]
        images: list[Any] = []
        for chunk in self._chunks(arr):
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(chunk), allow_pickle=False)
            response = self._request("POST", "/v1/decode", content=buf.getvalue(), params={"format": "json"},
                                     headers={"Content-Type": "application/x-npy"})
            for png in response.json()["images"]:
                image = Image.open(io.BytesIO(base64.b64decode(png)), formats=["PNG"])  # the server sends PNG only
                image.load()
                images.append(image)
        return images


def _metadata(body: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (its JSON header)."""
    import json
    import struct

    (n,) = struct.unpack("<Q", body[:8])
    return dict(json.loads(body[8:8 + n]).get("__metadata__", {}))
