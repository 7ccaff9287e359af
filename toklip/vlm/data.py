"""LLaVA conversation data as a resumable stream of padded batches.

A LLaVA JSON file is a list of records ``{"id", "image": "rel/path.jpg" (or a list, or absent for text only),
"conversations": [{"from": "human" | "gpt", "value": "...<image>..."}, ...]}``; images are read from a root
folder (``task.images``; default: the JSON's folder), never outside it. The records are a map-style dataset read
through :class:`toklip.data.sources.IndexSource`: an order fixed by (seed, epoch), each process and loader worker
its own share, and each batch carrying its worker's position ``{"worker", "epoch", "pos", "skipped", "seen"}``
(the protocol of :mod:`toklip.train.data`), so a resumed run continues exactly where the checkpoint left it.
A sample that cannot be used (missing or broken image, placeholders that do not match its images, longer than
``max_length`` with image tokens past the cut, no reply left) is skipped and counted, never fatal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from toklip.core.errors import ConfigError, InputError
from toklip.data.sources import IndexSource, decode_image
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

    def describe(self) -> str:
        return f"LLaVA conversations {self.path.name}, images in {self.root}"

    def sample(self, index: int) -> tuple[list[Mapping[str, Any]], list[Path]]:
        """-> (the conversation turns, the image files in placeholder order); InputError for a malformed record."""
        rec = self.records[index]
        if not isinstance(rec, Mapping):
            raise InputError(f"record {index} is not an object")
        conv = rec.get("conversations")
        if not isinstance(conv, list) or not conv:
            raise InputError(f"record {index} has no 'conversations' list")
        image = rec.get("image")
        names = [] if image is None else [image] if isinstance(image, str) else image
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise InputError(f"record {index}: 'image' must be a path or a list of paths, got {image!r}")
        return conv, [self.image_path(n) for n in names]

    def image_path(self, name: str) -> Path:
        rel = Path(name)
        path = (self.root / rel).resolve()
        if rel.is_absolute() or not path.is_relative_to(self.root):
            raise InputError(f"image path {name!r} leaves the image folder {self.root}")
        return path


def _index(image: Any) -> int:
    """The record index an IndexSource sample names (``(epoch, index)``, or the bare index)."""
    return int(image[1]) if isinstance(image, tuple) else int(image)


class Conversations:
    """Decode + collate of LLaVA conversation records for :class:`toklip.train.data.BatchStream` (the trainer's one
    resumable stream): ``{"input_ids", "attention_mask", "labels" [B, L], "images" [M, 3, S, S]}`` (right padding;
    ``images`` holds the batch's images in placeholder order, M may be 0)."""

    def __init__(self, data: ConversationFile, *, tokenizer: Any, num_image_tokens: int, image_token: str,
                 image_token_id: int, template: str, image_size: int, resize_mode: str = "shortest",
                 max_length: int | None = None, max_pixels: int | None = None) -> None:
        self.data = data
        self.tokenizer, self.num_image_tokens, self.image_token = tokenizer, num_image_tokens, image_token
        self.image_token_id, self.template, self.image_size = image_token_id, template, image_size
        self.resize_mode, self.max_length, self.max_pixels = resize_mode, max_length, max_pixels

    def decode_sample(self, raw: Any) -> tuple[Encoded, list[Tensor]]:
        return self.decode(_index(raw.image))

    def collate_items(self, items: list[tuple[Encoded, list[Tensor]]]) -> dict[str, Any]:
        return self.collate([enc for enc, _ in items], [img for _, imgs in items for img in imgs])

    def decode(self, index: int) -> tuple[Encoded, list[Tensor]]:
        """One record -> its encoded conversation (truncated to max_length) and its images [3, S, S]."""
        from toklip.vlm.model import check_placeholders

        conv, paths = self.data.sample(index)
        enc = encode_conversation(self.tokenizer, conv, num_image_tokens=self.num_image_tokens,
                                  image_token=self.image_token, template=self.template)  # type: ignore[arg-type]
        check_placeholders(enc.num_images, len(paths), self.image_token, where=f"record {index}")
        if self.max_length is not None and len(enc.input_ids) > self.max_length:
            if bool((enc.input_ids[self.max_length:] == self.image_token_id).any()):
                raise InputError(f"record {index} is {len(enc.input_ids)} tokens long and max_length "
                                 f"{self.max_length} would cut into its image tokens")
            enc = Encoded(enc.input_ids[: self.max_length], enc.labels[: self.max_length], enc.num_images)
        if not bool((enc.labels != IGNORE_INDEX).any()):
            raise InputError(f"record {index} has no reply tokens (within max_length) to learn from")
        images = [decode_image(p, self.image_size, self.resize_mode, self.max_pixels) for p in paths]
        return enc, images

    def collate(self, samples: list[Encoded], images: list[Tensor]) -> dict[str, Any]:
        batch: dict[str, Any] = pad_batch(samples, pad_id=int(self.tokenizer.pad_token_id), padding_side="right")
        batch["images"] = torch.stack(images) if images else torch.zeros(0, 3, self.image_size, self.image_size)
        return batch


def vlm_stream(data: ConversationFile, *, batch_size: int, rank: int = 0, world: int = 1, workers: int = 0,
               seed: int = 0, shuffle: bool = True, **options: Any) -> BatchStream:
    """Endless, exactly resumable batches of one process's share of ``data`` (``options``: :class:`Conversations`)."""
    records = Conversations(data, **options)
    return BatchStream(IndexSource(len(data), data.describe()), batch_size=batch_size, decode=records.decode_sample,
                       collate=records.collate_items, rank=rank, world=world, workers=workers, seed=seed,
                       shuffle=shuffle)
