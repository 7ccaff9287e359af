"""Response bodies: arrays as JSON, safetensors or .npy; images as PNG. Picked by an explicit ``format``
option first, then the ``Accept`` header, then the endpoint's default."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from toklip.serve.errors import invalid

MEDIA_TYPES = {
    "json": "application/json",
    "safetensors": "application/x-safetensors",
    "npy": "application/x-npy",
    "png": "image/png",
}
_ACCEPT = {
    "application/json": "json",
    "application/x-safetensors": "safetensors",
    "application/safetensors": "safetensors",
    "application/x-npy": "npy",
    "application/npy": "npy",
    "image/png": "png",
}


def choose_format(explicit: str | None, request: Request, allowed: Sequence[str], default: str) -> str:
    if explicit:
        return explicit
    for part in request.headers.get("accept", "").split(","):
        fmt = _ACCEPT.get(part.split(";")[0].strip().lower())
        if fmt in allowed:
            return fmt
    return default


def array_response(arrays: Mapping[str, np.ndarray], fmt: str, meta: Mapping[str, Any]) -> Response:
    """JSON: ``{**meta, name: nested lists}``; safetensors: every array, meta as string metadata; npy: one array."""
    if fmt == "json":
        return JSONResponse({**meta, **{k: v.tolist() for k, v in arrays.items()}})
    if fmt == "safetensors":
        from safetensors.numpy import save

        metadata = {k: v if isinstance(v, str) else ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
                    for k, v in meta.items()}
        body = save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata=metadata)
        return Response(body, media_type=MEDIA_TYPES["safetensors"])
    if fmt == "npy":
        if len(arrays) != 1:
            raise invalid(
                f"an .npy file holds one array, but {len(arrays)} outputs were asked for ({', '.join(arrays)}); "
                "ask for one output or use format=safetensors",
                "invalid_field",
            )
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(next(iter(arrays.values()))), allow_pickle=False)
        return Response(buf.getvalue(), media_type=MEDIA_TYPES["npy"])
    raise invalid(f"unknown format {fmt!r}", "invalid_field")  # pragma: no cover - validated before


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def png_response(pngs: list[bytes], fmt: str, meta: Mapping[str, Any]) -> Response:
    if fmt == "png":
        if len(pngs) != 1:
            raise invalid(f"a PNG holds one image, but {len(pngs)} grids were sent; send format=json for a batch",
                          "invalid_field")
        return Response(pngs[0], media_type=MEDIA_TYPES["png"])
    return JSONResponse({**meta, "images": [base64.b64encode(p).decode("ascii") for p in pngs]})
