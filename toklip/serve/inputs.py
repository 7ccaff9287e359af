"""Reading request bodies: images (multipart, base64 JSON, or a raw image body), texts, and index grids
(JSON, .npy or safetensors). Everything a client can get wrong becomes an ``APIError`` with a 4xx status and
a message that says what was wrong and what to send instead.

Work is bounded before it is done: each body has a byte limit for what it carries (``BodyLimits``: index
grids and texts get far less than images), a JSON body's number of values is bounded (a comma count) before
it is parsed, and parsing runs in a worker thread, off the event loop. Array headers (.npy, safetensors) are
checked against the body before anything is allocated.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from toklip.data.preprocess import describe_bytes, sniff
from toklip.serve.errors import APIError, bad_request, invalid, too_large
from toklip.serve.settings import ServeSettings

RAW_IMAGE_TYPES = ("image/", "application/octet-stream")
NPY_TYPES = ("application/x-npy", "application/npy")
SAFETENSORS_TYPES = ("application/x-safetensors", "application/safetensors")
IMAGE_FIELDS = ("image", "images")
TEXT_FIELDS = ("text", "texts")
_DATA_URL = re.compile(r"^data:[\w.+/-]*(;[\w.+-]+=[\w.+-]+)*;base64,", re.IGNORECASE)
SLACK_BYTES = 64 * 1024  # headers, options and whitespace on top of what the items themselves need
# safetensors dtypes an index tensor may have (little-endian by the format's definition)
SAFETENSORS_INTS = {"I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4",
                    "U16": "<u2", "U8": "u1"}
_KIND_NAMES = {"b": "booleans", "f": "floats", "c": "complex numbers", "U": "strings", "S": "bytes",
               "O": "mixed, ragged or too large values", "V": "structured records", "M": "dates", "m": "durations"}


@dataclass(frozen=True)
class BodyLimits:
    """What one endpoint's bodies may weigh: bytes per body kind, and JSON values (commas) per body."""

    json_bytes: int
    binary_bytes: int
    json_values: int
    what: str  # for messages: "index grids (at most 32 grids of 8x8 tokens)"


def body_limits(settings: ServeSettings, wants: frozenset[str], grid: tuple[int, int]) -> BodyLimits:
    """Limits derived from the request-item limits and the model's token grid (capped by max_body_bytes).

    Index grids: 24 bytes per JSON number (digits, comma, indentation) or 8 per binary one; texts: 6 bytes per
    character (JSON's \\uXXXX escapes); images: the whole body limit.
    """
    n, cap = settings.max_request_items, settings.max_body_bytes
    if "indices" in wants:
        tokens = grid[0] * grid[1]
        return BodyLimits(min(cap, n * tokens * 24 + SLACK_BYTES), min(cap, n * tokens * 8 + SLACK_BYTES),
                          n * (tokens + grid[0]) + 64, f"index grids (at most {n} grids of {grid[0]}x{grid[1]} tokens)")
    text_values = n * (settings.max_text_chars + 1)  # commas inside texts count too: an upper bound
    if "images" not in wants:
        text_bytes = min(cap, n * (6 * settings.max_text_chars + 512) + SLACK_BYTES)
        return BodyLimits(text_bytes, text_bytes, text_values + 64,
                          f"texts (at most {n} of {settings.max_text_chars:,} characters)")
    values = 4 * n + 64 + (text_values if "texts" in wants else 0)
    return BodyLimits(cap, cap, values, f"images (at most {n})")


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


Offload = Callable[..., Awaitable[Any]]


async def _in_thread(func: Callable[..., Any], *args: Any) -> Any:
    return await anyio.to_thread.run_sync(func, *args)


async def parse_request(
    request: Request,
    settings: ServeSettings,
    *,
    body_model: type[BaseModel],
    options_model: type[BaseModel],
    wants: frozenset[str],
    limits: BodyLimits,
    offload: Offload = _in_thread,
) -> Parsed:
    """Read the body by its Content-Type; ``wants`` is a subset of {"images", "texts", "indices"}.

    ``offload(func, *args)`` runs CPU-heavy parsing away from the event loop (a bounded thread pool).
    """
    kind = media_type(request)
    query = _query_options(request)
    if kind == "multipart/form-data" and "indices" not in wants:
        limited = limit_body(request, limits.binary_bytes, limits.what)
        parsed = await _from_multipart(limited, settings, options_model, query, wants)
    elif kind == "application/json" or kind.endswith("+json"):
        body = await limit_body(request, limits.json_bytes, f"JSON {limits.what}").body()
        parsed = await offload(parse_json_body, body, body_model, options_model, query, wants, limits.json_values)
    elif "images" in wants and "texts" not in wants and kind.startswith(RAW_IMAGE_TYPES):
        body = await limit_body(request, limits.binary_bytes, limits.what).body()
        if not body:
            raise bad_request("the request body is empty; send the image file as the body", "empty_body")
        parsed = Parsed(validate(options_model, query), images=[body])
    elif "indices" in wants and (kind in NPY_TYPES or kind in SAFETENSORS_TYPES or kind == "application/octet-stream"):
        body = await limit_body(request, limits.binary_bytes, limits.what).body()
        options = validate(options_model, query)
        parsed = Parsed(options, indices=await offload(read_index_file, body, kind))
    else:
        raise APIError(415, "unsupported_media_type", _accepted_types(kind, wants))
    _check_counts(parsed, settings, wants)
    return parsed


def limit_body(request: Request, limit: int, what: str) -> Request:
    """The same request, whose body may not exceed ``limit`` bytes (413, by the declared length or as it
    arrives). The server-wide limit (LimitsMiddleware) still applies on top."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
        raise APIError(413, "body_too_large",  # the body is never read: close, or it would be the next request
                       _too_large(declared if len(declared) <= 18 else "more than 10**18", limit, what),
                       {"Connection": "close"})
    received = 0

    async def receive() -> Any:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise APIError(413, "body_too_large", _too_large(f"more than {limit:,}", limit, what),
                               {"Connection": "close"})
        return message

    return Request(request.scope, receive)


async def read_json_body(request: Request, limit: int, what: str) -> bytes:
    """The body of a JSON-only endpoint: 415 for any other Content-Type, 413 past ``limit`` (see limit_body)."""
    kind = media_type(request)
    if kind != "application/json" and not kind.endswith("+json"):
        got = f"Content-Type {kind[:100]!r}" if kind else "a request without a Content-Type"
        raise APIError(415, "unsupported_media_type", f"{got} is not accepted here; send application/json")
    return await limit_body(request, limit, what).body()


def _too_large(size: str, limit: int, what: str) -> str:
    size = f"{int(size):,}" if size.isdigit() else size
    return (f"the request body is {size} bytes, above this endpoint's limit of {limit:,} bytes for {what}; "
            "send fewer items per request")


def _accepted_types(kind: str, wants: frozenset[str]) -> str:
    got = f"Content-Type {kind[:100]!r}" if kind else "a request without a Content-Type"
    if "indices" in wants:
        return f"{got} is not accepted here; send application/json, application/x-npy or application/x-safetensors"
    accepted = "multipart/form-data or application/json"
    if "texts" not in wants:
        accepted += ", or the image file itself with an image/* Content-Type"
    return f"{got} is not accepted here; send {accepted}"


def parse_json_body(
    body: bytes,
    body_model: type[BaseModel],
    options_model: type[BaseModel],
    query: dict[str, Any],
    wants: frozenset[str],
    max_values: int,
) -> Parsed:
    """A JSON body -> ``Parsed`` (CPU work: runs in a worker thread). The value count is bounded first."""
    if not body.strip():
        raise bad_request("the request body is empty; send a JSON object", "empty_body")
    if body.count(b",") >= max_values:
        raise too_large(f"the JSON body holds more than {max_values:,} values, more than any valid request to this "
                        "endpoint; send fewer items per request", "too_many_items")
    data = load_json(body)
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


def load_json(body: bytes) -> Any:
    """``json.loads`` with every failure as a 400 that says where and what (never the raw exception)."""
    try:
        return json.loads(body)
    except json.JSONDecodeError as e:
        raise bad_request(f"the body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
                          "invalid_json") from e
    except UnicodeDecodeError as e:
        raise bad_request("the body is not valid JSON: it is not UTF-8 text", "invalid_json") from e
    except RecursionError as e:
        raise bad_request("the JSON body is nested too deeply", "invalid_json") from e
    except ValueError as e:  # Python's int-string conversion limit (4,300 digits)
        raise bad_request("the JSON body holds a number with too many digits (more than 4,300); no valid value "
                          "here is that long", "invalid_json") from e


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
                    raise invalid(f"unexpected file in form field {key[:100]!r}; this endpoint takes {expected}",
                                  "invalid_field")
                data = await value.read()
                if not data:
                    raise bad_request(f"images[{len(images)}] ({(value.filename or 'upload')[:100]}) is empty "
                                      "(0 bytes)", "empty_image")
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
                raise invalid(f"unknown form field {key[:100]!r}; expected {', '.join(known + sorted(option_names))}",
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


def decode_base64(value: str, index: int, name: str | None = None) -> bytes:
    """A base64 image (or a data: URL) -> its bytes; ``name`` is how messages call it (default "images[index]")."""
    name = name or f"images[{index}]"
    raw = _DATA_URL.sub("", value, count=1)
    if raw.startswith(("http://", "https://", "ftp://", "file:")):
        raise invalid(f"{name} is a URL; the server never fetches URLs: send the file's bytes as base64",
                      "url_not_allowed")
    try:
        data = base64.b64decode("".join(raw.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad_request(f"{name} is not valid base64 (only A-Z, a-z, 0-9, '+', '/' and '=' padding, "
                          "optionally after a data: URL prefix)", "invalid_base64") from e
    if not data:
        raise bad_request(f"{name} is empty", "empty_image")
    return data


def indices_from_json(value: list[Any]) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            arr = np.array(value)
    except (ValueError, OverflowError, TypeError) as e:
        raise invalid("indices must be a rectangular batch of integer grids ([B][N] or [B][h][w]); these rows "
                      "have different lengths or hold values that are not integers", "invalid_indices") from e
    return check_index_array(arr)


def _check_integer_dtype(dtype: np.dtype) -> None:
    if dtype.kind not in "iu":
        raise invalid(f"indices must be integers, got {_KIND_NAMES.get(dtype.kind, str(dtype))}", "invalid_indices")


def check_index_array(arr: np.ndarray) -> np.ndarray:
    if arr.size == 0:
        raise invalid(f"indices are empty (shape {list(arr.shape)})", "invalid_indices")
    _check_integer_dtype(arr.dtype)
    if arr.ndim not in (2, 3):
        hint = " (one image is [[...]], a batch of one)" if arr.ndim == 1 else ""
        raise invalid(f"indices must have shape [B, N] or [B, h, w], got {list(arr.shape)[:8]}{hint}",
                      "invalid_indices")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise invalid("indices are too large for int64", "invalid_indices")
    return arr.astype(np.int64, copy=False)


def read_index_file(body: bytes, kind: str) -> np.ndarray:
    """An .npy file (never unpickled) or a safetensors file with an integer tensor named 'indices'."""
    if not body:
        raise bad_request("the request body is empty; send an .npy or safetensors file", "empty_body")
    if body.startswith(b"\x93NUMPY") and kind not in SAFETENSORS_TYPES:
        return check_index_array(read_npy(body))
    if kind in NPY_TYPES:
        raise bad_request(f"the body is not an .npy file (no \\x93NUMPY magic): it is {describe_bytes(body[:4096])}",
                          "invalid_npy")
    return check_index_array(read_safetensors_indices(body))


def read_npy(body: bytes) -> np.ndarray:
    """An .npy array whose header is checked against the body before anything is allocated."""
    fp = io.BytesIO(body)
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(fp)
        else:
            raise bad_request(f".npy format version {version[0]}.{version[1]} is not accepted; save integer arrays "
                              "with numpy.save (version 1.0)", "invalid_npy")
    except APIError:
        raise
    except Exception as e:  # noqa: BLE001 - the header is a Python literal; hostile ones fail many ways
        raise bad_request("the body is not a readable .npy file: its header is malformed", "invalid_npy") from e
    if dtype.hasobject:
        raise bad_request("the .npy file holds Python objects, which would need unpickling; the server never "
                          "unpickles request data: send an integer array", "invalid_npy")
    _check_integer_dtype(dtype)
    if any(d < 0 for d in shape):
        raise bad_request(f"the .npy header declares a negative shape {list(shape)[:8]}", "invalid_npy")
    count = math.prod(shape)
    available = len(body) - fp.tell()
    if count * dtype.itemsize != available:
        raise bad_request(f"the .npy header declares shape {list(shape)[:8]} of {dtype} ({count * dtype.itemsize:,} "
                          f"bytes), but the body holds {available:,} bytes of data", "invalid_npy")
    flat = np.frombuffer(body, dtype=dtype, count=count, offset=fp.tell())
    return flat.reshape(shape, order="F" if fortran else "C")


def read_safetensors_indices(body: bytes) -> np.ndarray:
    """The 'indices' tensor of a safetensors body; only integer dtypes (BF16, F8, ... get a clear 422)."""
    from safetensors import SafetensorError, deserialize

    try:
        tensors = dict(deserialize(body))  # validates the header, offsets and sizes against the body
    except (SafetensorError, ValueError, OSError, OverflowError, TypeError) as e:
        kind = sniff(body[:4096])
        if kind is not None and kind.name == "a safetensors file":
            message = "the body is a damaged safetensors file (its header, offsets or sizes are invalid)"
        else:
            message = f"the body is neither an .npy array nor a safetensors file: it is {describe_bytes(body[:4096])}"
        raise bad_request(message, "invalid_safetensors") from e
    if "indices" not in tensors:
        names = sorted(tensors)
        shown = ", ".join(repr(n[:50]) for n in names[:10])
        shown += f" and {len(names) - 10} more" if len(names) > 10 else ""
        raise invalid(f"the safetensors file has no tensor named 'indices' (it has {shown or 'no tensors'})",
                      "missing_field")
    tensor = tensors["indices"]
    dtype = SAFETENSORS_INTS.get(tensor["dtype"])
    if dtype is None:
        raise invalid(f"the 'indices' tensor is {tensor['dtype']}; indices must be an integer tensor "
                      f"({', '.join(SAFETENSORS_INTS)})", "invalid_indices")
    return np.frombuffer(tensor["data"], dtype=np.dtype(dtype)).reshape(tensor["shape"])
