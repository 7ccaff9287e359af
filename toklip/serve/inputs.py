"""Reading request bodies: images (multipart, base64 JSON, or a raw image body), texts, and index grids
(JSON, .npy or safetensors). Everything a client can get wrong becomes an ``APIError`` with a 4xx status and
a message that says what was wrong and what to send instead."""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from toklip.serve.errors import APIError, bad_request, invalid, too_large
from toklip.serve.settings import ServeSettings

RAW_IMAGE_TYPES = ("image/", "application/octet-stream")
NPY_TYPES = ("application/x-npy", "application/npy")
SAFETENSORS_TYPES = ("application/x-safetensors", "application/safetensors")
IMAGE_FIELDS = ("image", "images")
TEXT_FIELDS = ("text", "texts")
_DATA_URL = re.compile(r"^data:[\w.+/-]*(;[\w.+-]+=[\w.+-]+)*;base64,", re.IGNORECASE)


@dataclass
class Parsed:
    """What one request carries, already type-checked (images still encoded)."""

    options: BaseModel
    images: list[bytes] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    indices: Any = None  # np.ndarray of integers for /v1/decode


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(x) for x in e["loc"]) or "body"
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown field {loc!r}")
        elif e["type"] == "missing":
            parts.append(f"missing field {loc!r}")
        else:
            parts.append(f"{loc}: {e['msg']}")
    more = len(err.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def validate(model: type[BaseModel], data: Any) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise invalid(_describe(e), "invalid_field") from e


def _query_options(request: Request) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in request.query_params:
        values = request.query_params.getlist(key)
        out[key] = _split_list(values) if key == "outputs" else values[-1]
    return out


def _split_list(values: list[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


async def parse_request(
    request: Request,
    settings: ServeSettings,
    *,
    body_model: type[BaseModel],
    options_model: type[BaseModel],
    wants: frozenset[str],
) -> Parsed:
    """Read the body by its Content-Type; ``wants`` is a subset of {"images", "texts", "indices"}."""
    kind = media_type(request)
    query = _query_options(request)
    if kind == "multipart/form-data" and "indices" not in wants:
        parsed = await _from_multipart(request, settings, options_model, query, wants)
    elif kind == "application/json" or kind.endswith("+json"):
        parsed = await _from_json(request, body_model, options_model, query, wants)
    elif "images" in wants and "texts" not in wants and kind.startswith(RAW_IMAGE_TYPES):
        body = await request.body()
        if not body:
            raise bad_request("the request body is empty; send the image file as the body", "empty_body")
        parsed = Parsed(validate(options_model, query), images=[body])
    elif "indices" in wants and (kind in NPY_TYPES or kind in SAFETENSORS_TYPES or kind == "application/octet-stream"):
        body = await request.body()
        parsed = Parsed(validate(options_model, query), indices=read_index_file(body, kind))
    else:
        raise APIError(415, "unsupported_media_type", _accepted_types(kind, wants))
    _check_counts(parsed, settings, wants)
    return parsed


def _accepted_types(kind: str, wants: frozenset[str]) -> str:
    got = f"Content-Type {kind!r}" if kind else "a request without a Content-Type"
    if "indices" in wants:
        return f"{got} is not accepted here; send application/json, application/x-npy or application/x-safetensors"
    accepted = "multipart/form-data or application/json"
    if "texts" not in wants:
        accepted += ", or the image file itself with an image/* Content-Type"
    return f"{got} is not accepted here; send {accepted}"


async def _from_json(
    request: Request,
    body_model: type[BaseModel],
    options_model: type[BaseModel],
    query: dict[str, Any],
    wants: frozenset[str],
) -> Parsed:
    body = await request.body()
    if not body.strip():
        raise bad_request("the request body is empty; send a JSON object", "empty_body")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"the body is not valid JSON: {e}", "invalid_json") from e
    except RecursionError as e:
        raise bad_request("the JSON body is nested too deeply", "invalid_json") from e
    if not isinstance(data, dict):
        raise invalid(f"the JSON body must be an object, got {type(data).__name__}", "invalid_field")
    data = {**query, **data}
    checked = validate(body_model, data)
    options = validate(options_model, {k: v for k, v in checked.model_dump().items() if k not in wants})
    parsed = Parsed(options)
    if "images" in wants:
        parsed.images = [decode_base64(s, i) for i, s in enumerate(checked.images)]  # type: ignore[attr-defined]
    if "texts" in wants:
        parsed.texts = list(checked.texts)  # type: ignore[attr-defined]
    if "indices" in wants:
        parsed.indices = indices_from_json(checked.indices)  # type: ignore[attr-defined]
    return parsed


async def _from_multipart(
    request: Request,
    settings: ServeSettings,
    options_model: type[BaseModel],
    query: dict[str, Any],
    wants: frozenset[str],
) -> Parsed:
    limit = settings.max_request_items
    images: list[bytes] = []
    texts: list[str] = []
    options: dict[str, Any] = dict(query)
    option_names = set(options_model.model_fields)
    try:
        form = await request.form(max_files=limit, max_fields=limit + 16, max_part_size=1024 * 1024)
    except HTTPException as e:
        if str(e.detail).startswith(("Too many files", "Too many fields")):
            raise too_large(f"more than {limit} images or texts in one request, above the limit of {limit}; "
                            "split the request", "too_many_items") from e
        raise bad_request(f"the multipart body could not be parsed: {e.detail}", "invalid_multipart") from e
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key not in IMAGE_FIELDS or "images" not in wants:
                    expected = "'image'" if "images" in wants else "no file"
                    raise invalid(f"unexpected file in form field {key!r}; this endpoint takes {expected}",
                                  "invalid_field")
                data = await value.read()
                if not data:
                    raise bad_request(f"images[{len(images)}] ({value.filename or 'upload'}) is empty (0 bytes)",
                                      "empty_image")
                images.append(data)
            elif key in IMAGE_FIELDS and "images" in wants:
                raise invalid(
                    f"form field {key!r} must be a file upload (curl -F '{key}=@photo.jpg'), got a text value",
                    "invalid_field",
                )
            elif key in TEXT_FIELDS and "texts" in wants:
                texts.append(value)
            elif key in option_names:
                options[key] = _split_list([value]) if key == "outputs" else value
            else:
                known = [f for f, w in ((IMAGE_FIELDS[0], "images"), (TEXT_FIELDS[1], "texts")) if w in wants]
                raise invalid(f"unknown form field {key!r}; expected {', '.join(known + sorted(option_names))}",
                              "invalid_field")
    finally:
        await form.close()  # the spooled upload files, however this ends
    if "images" in wants and not images:
        raise invalid("no image in the form; upload one with the field name 'image'", "missing_field")
    if "texts" in wants and not texts:
        raise invalid("no text in the form; send one or more 'texts' fields", "missing_field")
    return Parsed(validate(options_model, options), images=images, texts=texts)


def _check_counts(parsed: Parsed, settings: ServeSettings, wants: frozenset[str]) -> None:
    limit = settings.max_request_items
    for name, count in (("images", len(parsed.images)), ("texts", len(parsed.texts)),
                        ("index grids", 0 if parsed.indices is None else int(parsed.indices.shape[0]))):
        if count > limit:
            raise too_large(f"{count} {name} in one request is above the limit of {limit}; split the request",
                            "too_many_items")
    for i, text in enumerate(parsed.texts):
        if len(text) > settings.max_text_chars:
            raise invalid(f"texts[{i}] has {len(text)} characters, above the limit of {settings.max_text_chars}",
                          "text_too_long")


def decode_base64(value: str, index: int) -> bytes:
    raw = _DATA_URL.sub("", value, count=1)
    if raw.startswith(("http://", "https://", "ftp://", "file:")):
        raise invalid(f"images[{index}] is a URL; the server never fetches URLs: send the file's bytes as base64",
                      "url_not_allowed")
    try:
        data = base64.b64decode("".join(raw.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad_request(f"images[{index}] is not valid base64: {e}", "invalid_base64") from e
    if not data:
        raise bad_request(f"images[{index}] is empty", "empty_image")
    return data


def indices_from_json(value: list[Any]) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            arr = np.array(value)
    except (ValueError, OverflowError, TypeError) as e:
        raise invalid(
            f"indices must be a rectangular batch of integer grids ([B][N] or [B][h][w]); {e}", "invalid_indices"
        ) from e
    return check_index_array(arr)


def check_index_array(arr: np.ndarray) -> np.ndarray:
    if arr.size == 0:
        raise invalid(f"indices are empty (shape {list(arr.shape)})", "invalid_indices")
    if arr.dtype.kind not in "iu":
        kinds = {"b": "booleans", "f": "floats", "U": "strings", "O": "mixed, ragged or too large values"}
        what = kinds.get(arr.dtype.kind, str(arr.dtype))
        raise invalid(f"indices must be integers, got {what}", "invalid_indices")
    if arr.ndim not in (2, 3):
        hint = " (one image is [[...]], a batch of one)" if arr.ndim == 1 else ""
        raise invalid(f"indices must have shape [B, N] or [B, h, w], got {list(arr.shape)}{hint}", "invalid_indices")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise invalid("indices are too large for int64", "invalid_indices")
    return arr.astype(np.int64, copy=False)


def read_index_file(body: bytes, kind: str) -> np.ndarray:
    """An .npy file (allow_pickle=False) or a safetensors file with a tensor named 'indices'."""
    if not body:
        raise bad_request("the request body is empty; send an .npy or safetensors file", "empty_body")
    if body.startswith(b"\x93NUMPY") and kind not in SAFETENSORS_TYPES:
        try:
            arr = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise bad_request(f"the body is not a readable .npy file: {e}", "invalid_npy") from e
        return check_index_array(np.asarray(arr))
    if kind in NPY_TYPES:
        raise bad_request("the body is not an .npy file (no \\x93NUMPY magic)", "invalid_npy")
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        tensors = load(body)
    except (SafetensorError, ValueError, OSError) as e:
        raise bad_request(f"the body is neither an .npy nor a safetensors file: {e}", "invalid_safetensors") from e
    if "indices" not in tensors:
        raise invalid(f"the safetensors file has no tensor named 'indices' (it has {sorted(tensors)})",
                      "missing_field")
    return check_index_array(tensors["indices"])
