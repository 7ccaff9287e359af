"""LLaVA conversation data as a resumable stream of padded batches.

A LLaVA JSON file is a list of records ``{"id", "image": "rel/path.jpg" (or a list, or absent for text only),
"conversations": [{"from": "human" | "gpt", "value": "...<image>..."}, ...]}``; images are read from a root
folder (``task.images``; default: the JSON's folder), never outside it. The records are a map-style dataset read
through :class:`toklip.data.sources.IndexSource`: an order fixed by (seed, epoch), each process and loader worker
its own share, and each batch carrying its worker's position ``{"worker", "epoch", "pos", "skipped", "seen"}``
(the protocol of :mod:`toklip.train.data`), so a resumed run continues exactly where the checkpoint left it.
A sample that cannot be used (missing or broken image, placeholders that do not match its images, longer than
``max_length`` with image tokens past the cut, no reply left) is skipped and counted, never fatal.

The same records also stream from WebDataset shards (:class:`ConversationShards`: ``KEY.json`` is the record,
``KEY.jpg`` its image), read through :class:`toklip.data.sources.WebDatasetSource` like image-text shards: whole
shards per worker, the same exact resume. :func:`open_conversations` picks the reader from ``data.path``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from toklip.core.errors import ConfigError, InputError
from toklip.data.sources import (IndexSource, JsonCaption, RawSample, Source, WebDatasetSource, decode_image,
                                 expand_shards)
from toklip.train.data import BatchStream
from toklip.vlm.conversation import IGNORE_INDEX, Encoded, encode_conversation, pad_batch

MAX_JSON_BYTES = 8 << 30  # llava_v1_5_mix665k.json is ~1 GB


class ConversationFile:
    """The records of one LLaVA JSON file and the folder their images live in."""

    def __init__(self, path: str | Path, images: str | Path | None = None) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise ConfigError(f"data.path {str(self.path)!r} does not exist (the vlm task reads a LLaVA JSON file: "
                              "a list of {\"image\", \"conversations\"} records)")
        size = self.path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ConfigError(f"{self.path} is {size} bytes, more than a conversation file can be ({MAX_JSON_BYTES})")
        try:
            records = json.loads(self.path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"{self.path} is not a JSON file of LLaVA conversations: {str(e)[:200]}") from e
        if not isinstance(records, list) or not records:
            raise ConfigError(f"{self.path} must hold a non-empty JSON list of conversation records")
        self.records = records
        self.root = Path(images).expanduser() if images is not None else self.path.parent
        if not self.root.is_dir():
            raise ConfigError(f"task.images {str(self.root)!r} is not a folder (the root of the records' image paths)")
        self.root = self.root.resolve()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def source(self) -> Source:
        """The records as the trainer's samples (their indices, in the seeded order every source follows)."""
        return IndexSource(len(self.records), self.describe())

    def describe(self) -> str:
        return f"LLaVA conversations {self.path.name}, images in {self.root}"

    def sample(self, index: int) -> tuple[list[Mapping[str, Any]], list[Path]]:
        """-> (the conversation turns, the image files in placeholder order); InputError for a malformed record."""
        conv, names = check_record(self.records[index], f"record {index}")
        return conv, [self.image_path(n) for n in names]

    def image_path(self, name: str) -> Path:
        rel = Path(name)
        path = (self.root / rel).resolve()
        if rel.is_absolute() or not path.is_relative_to(self.root):
            raise InputError(f"image path {name!r} leaves the image folder {self.root}")
        return path


class ConversationShards:
    """LLaVA records in WebDataset shards (local, URLs, ``pipe:``; a folder of .tar files, a brace pattern):
    ``KEY.json`` holds the record (``conversations``; its ``image`` name is not read) and ``KEY.jpg`` (png, webp
    ...) its image; a sample without an image file is text-only. Shards stream: nothing is listed up front."""

    def __init__(self, path: Any) -> None:
        self.urls = expand_shards(path)
        self.source: Source = WebDatasetSource(self.urls)

    def describe(self) -> str:
        return f"LLaVA conversations in {self.source.describe()}"

    @staticmethod
    def sample(raw: RawSample) -> tuple[list[Mapping[str, Any]], list[Any]]:
        """-> (the conversation turns, the sample's image bytes, if any); InputError for a malformed sample."""
        if not isinstance(raw.caption, JsonCaption):
            raise InputError(f"sample {raw.key} has no .json record (a LLaVA shard sample is KEY.json + KEY.jpg)")
        try:
            record = json.loads(bytes(raw.caption).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise InputError(f"sample {raw.key}: its .json is not JSON: {str(e)[:200]}") from e
        conv, _ = check_record(record, f"sample {raw.key}")
        return conv, [] if raw.image is None else [raw.image]


def open_conversations(path: Any, images: str | Path | None = None) -> ConversationFile | ConversationShards:
    """``data.path`` -> its reader: a ``.json`` file (images under ``images``) or WebDataset shards."""
    if path is None:
        raise ConfigError("data.path must name a LLaVA JSON conversation file or WebDataset shards of them")
    text = str(path)
    if text.endswith(".json") or Path(text).expanduser().is_file() and not text.endswith(".tar"):
        return ConversationFile(path, images)
    if images is not None:
        raise ConfigError("task.images is the image folder of a JSON file; WebDataset shards hold their own images")
    from toklip.data.sources import DataError

    try:
        return ConversationShards(path)
    except DataError as e:
        raise ConfigError(f"data.path {text!r}: {e} (give a LLaVA .json file or WebDataset shards)") from e


def check_record(record: Any, where: str) -> tuple[list[Mapping[str, Any]], list[str]]:
    """A LLaVA record -> (its ``conversations`` turns, its ``image`` names); InputError naming what is malformed."""
    if not isinstance(record, Mapping):
        raise InputError(f"{where} is not an object")
    conv = record.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise InputError(f"{where} has no 'conversations' list")
    image = record.get("image")
    names = [] if image is None else [image] if isinstance(image, str) else image
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise InputError(f"{where}: 'image' must be a path or a list of paths, got {image!r}")
    return conv, names


def _index(image: Any) -> int:
    """The record index an IndexSource sample names (``(epoch, index)``, or the bare index)."""
    return int(image[1]) if isinstance(image, tuple) else int(image)


class Conversations:
    """Decode + collate of LLaVA conversation records for :class:`toklip.train.data.BatchStream` (the trainer's one
    resumable stream): ``{"input_ids", "attention_mask", "labels" [B, L], "images" [M, 3, S, S]}`` (right padding;
    ``images`` holds the batch's images in placeholder order, M may be 0)."""

    def __init__(self, data: ConversationFile | ConversationShards, *, tokenizer: Any, num_image_tokens: int,
                 image_token: str, image_token_id: int, template: str, image_size: int, resize_mode: str = "shortest",
                 max_length: int | None = None, max_pixels: int | None = None) -> None:
        self.data = data
        self.tokenizer, self.num_image_tokens, self.image_token = tokenizer, num_image_tokens, image_token
        self.image_token_id, self.template, self.image_size = image_token_id, template, image_size
        self.resize_mode, self.max_length, self.max_pixels = resize_mode, max_length, max_pixels

    def decode_sample(self, raw: Any) -> tuple[Encoded, list[Tensor]]:
        if isinstance(self.data, ConversationShards):
            conv, images = self.data.sample(raw)
            return self._encode(conv, images, f"sample {raw.key}")
        return self.decode(_index(raw.image))

    def collate_items(self, items: list[tuple[Encoded, list[Tensor]]]) -> dict[str, Any]:
        return self.collate([enc for enc, _ in items], [img for _, imgs in items for img in imgs])

    def decode(self, index: int) -> tuple[Encoded, list[Tensor]]:
        """One record of a JSON file -> its encoded conversation (truncated to max_length) and its images."""
        conv, paths = self.data.sample(index)  # type: ignore[arg-type]
        return self._encode(conv, paths, f"record {index}")

    def _encode(self, conv: list[Mapping[str, Any]], images: list[Any], where: str) -> tuple[Encoded, list[Tensor]]:
        """Turns + images (paths or bytes) -> the encoded conversation and the images ``[3, S, S]``."""
        from toklip.vlm.model import check_placeholders

        enc = encode_conversation(self.tokenizer, conv, num_image_tokens=self.num_image_tokens,
                                  image_token=self.image_token, template=self.template)  # type: ignore[arg-type]
        check_placeholders(enc.num_images, len(images), self.image_token, where=where)
        if self.max_length is not None and len(enc.input_ids) > self.max_length:
            if bool((enc.input_ids[self.max_length:] == self.image_token_id).any()):
                raise InputError(f"{where} is {len(enc.input_ids)} tokens long and max_length "
                                 f"{self.max_length} would cut into its image tokens")
            enc = Encoded(enc.input_ids[: self.max_length], enc.labels[: self.max_length], enc.num_images)
        if not bool((enc.labels != IGNORE_INDEX).any()):
            raise InputError(f"{where} has no reply tokens (within max_length) to learn from")
        return enc, [decode_image(i, self.image_size, self.resize_mode, self.max_pixels) for i in images]

    def collate(self, samples: list[Encoded], images: list[Tensor]) -> dict[str, Any]:
        batch: dict[str, Any] = pad_batch(samples, pad_id=int(self.tokenizer.pad_token_id), padding_side="right")
        batch["images"] = torch.stack(images) if images else torch.zeros(0, 3, self.image_size, self.image_size)
        return batch


def vlm_stream(data: ConversationFile | ConversationShards, *, batch_size: int, rank: int = 0, world: int = 1,
               workers: int = 0, seed: int = 0, shuffle: bool = True, **options: Any) -> BatchStream:
    """Endless, exactly resumable batches of one process's share of ``data`` (``options``: :class:`Conversations`)."""
    records = Conversations(data, **options)
    return BatchStream(data.source, batch_size=batch_size, decode=records.decode_sample,
                       collate=records.collate_items, rank=rank, world=world, workers=workers, seed=seed,
                       shuffle=shuffle)
