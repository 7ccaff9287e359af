"""The ``gen`` training task: a generator (LlamaGen GPT) over VQ codes, next-token cross-entropy, with the
tokenizer frozen. The trainer brings processes, precision, checkpoints and exact resume (toklip.train.task).

Data (``data.path``): the output folder of ``toklip tokenize`` (codes read from memory-mapped shards, one view
drawn per image and epoch, seeded) or images directly (a class folder; codes computed by the tokenizer's VQ on
the fly). Config::

    task: {name: gen, generator: gpt-b, tokenizer: toklip-s-256, fusion: concat, num_classes: 1000}
    optim: {lr: 1.0e-4, weight_decay: 0.05, betas: [0.9, 0.95], grad_clip: 1.0, schedule: const, warmup: 0}

Text-conditional (t2i) generators train on captions: tokenized captioned data (``toklip tokenize`` of a CSV, JSONL,
WebDataset or captioned folder) or such images directly, ``task: {generator: gpt-b-t2i, caption_encoder: PATH or
flan-t5-xl}``. Each step encodes its captions with the frozen T5 (no_grad; toklip.gen.captions, LlamaGen's
left-padded layout and mask); ``class_dropout`` replaces a caption by the model's unconditional caption embedding
under the same mask, as LlamaGen does. The encoder is held outside the generator's module tree, so checkpoints
(the whole generator state) never include it and resume rebuilds it from its source; it is deterministic in
eval mode, so resume stays exact. Samples without a caption are skipped (counted).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toklip.core.errors import ConfigError
from toklip.data.sources import IndexSource, RawSample, _mix, decode_image, read_caption
from toklip.train.config import TrainConfig, _check_keys
from toklip.train.data import BatchStream
from toklip.train.distributed import DistInfo


@dataclass
class GenOptions:
    """The ``task`` section of a generator run."""

    generator: str = "gpt-b"
    tokenizer: str | None = None  # what toklip.load takes; needed for fusion and for images as data
    fusion: Any = None  # None (plain VQ inputs) | "sum" | "weighted_sum" | "concat" | {"name": ..., **kwargs}
    feature_layer: int | None = None
    num_classes: int | None = None  # default: the class list of the tokenized data
    caption_encoder: str | None = None  # t2i: the T5 encoder (folder, hub id or "flan-t5-xl") encoding the captions
    class_dropout: float = 0.1  # LlamaGen's class_dropout_prob (conditions dropped for CFG training)
    view: Any = "random"  # which augmentation view of tokenized data: "random" (per image and epoch) or an int
    overrides: dict[str, Any] = field(default_factory=dict)  # GPT config fields (drop_path_rate, ...)


def parse_options(options: Mapping[str, Any]) -> GenOptions:
    _check_keys(options, [f.name for f in fields(GenOptions)], "section 'task' (gen)")
    opts = GenOptions(**{k: v for k, v in options.items()})
    if not isinstance(opts.generator, str):
        raise ConfigError(f"task.generator must be a generator name, got {opts.generator!r}")
    if opts.num_classes is not None and (not isinstance(opts.num_classes, int) or opts.num_classes < 1):
        raise ConfigError(f"task.num_classes must be a positive integer, got {opts.num_classes!r}")
    if not isinstance(opts.class_dropout, (int, float)) or not 0 <= opts.class_dropout < 1:
        raise ConfigError(f"task.class_dropout must be in [0, 1), got {opts.class_dropout!r}")
    if not isinstance(opts.overrides, Mapping):
        raise ConfigError(f"task.overrides must be a mapping of GPT config fields, got {opts.overrides!r}")
    if opts.fusion is not None and opts.tokenizer is None:
        raise ConfigError("task.fusion reads a TokLIP's features: give task.tokenizer (e.g. toklip-s-256 or a folder)")
    if opts.caption_encoder is not None and not isinstance(opts.caption_encoder, str):
        raise ConfigError(f"task.caption_encoder must be a T5 encoder folder, a hub id or flan-t5-xl, got "
                          f"{opts.caption_encoder!r}")
    if opts.caption_encoder is None and opts.generator.endswith("-t2i"):
        raise needs_caption_encoder(opts.generator)
    if opts.caption_encoder is not None and opts.num_classes is not None:
        raise ConfigError("task.num_classes is for class-conditional generators; a t2i run (task.caption_encoder) "
                          "is conditioned on captions")
    return opts


def needs_caption_encoder(generator: str) -> ConfigError:
    return ConfigError(f"task.caption_encoder: {generator} is text-conditional; give the T5 encoder that makes its "
                       "caption features (a folder, a hub id, or flan-t5-xl as LlamaGen)")


class GenForward(nn.Module):
    """What DDP/FSDP wrap: ``(codes, cond[, cond_mask]) -> logits``, the generator held as ``.model``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, codes: Tensor, cond: Tensor, cond_mask: Tensor | None = None) -> Tensor:
        return self.model(codes, cond, cond_mask=cond_mask)


def caption_of(value: Any) -> str:
    """A training caption (read_caption's InputError, so the sample is skipped, when missing or empty); cut to the
    caption encoder's character limit (its tokens are truncated far below it anyway)."""
    from toklip.gen.captions import MAX_PROMPT_CHARS

    return read_caption(value)[:MAX_PROMPT_CHARS]


def collate_items(items: list[tuple[Tensor, Any]], captions: bool) -> dict[str, Any]:
    """``(codes [N] or image [3, S, S], label or caption)`` pairs -> ``{"codes" | "images", "labels" | "captions"}``."""
    first = items[0][0]
    key = "images" if first.is_floating_point() else "codes"
    batch: dict[str, Any] = {key: torch.stack([x for x, _ in items])}
    if captions:
        batch["captions"] = [c for _, c in items]
    else:
        batch["labels"] = torch.tensor([lab for _, lab in items])
    return batch


class TokenItems:
    """Decode + collate for tokenized data: ``{"codes" [B, N], "labels" [B]}`` (or ``"captions"``, a list of B
    strings, with ``captions=True``); the view of image i in epoch e is drawn from (seed, e, i), so it differs per
    epoch and a resumed run draws the same ones."""

    def __init__(self, root: str, *, seed: int, view: Any, captions: bool = False) -> None:
        from toklip.data.token_dataset import TokenDataset

        self.dataset = TokenDataset(root, view=0)
        self.seed, self.view, self.captions = seed, view, captions

    def decode(self, s: RawSample) -> tuple[Tensor, Any]:
        epoch, index = s.image
        views = self.dataset.tokens(index)
        v = random.Random(_mix(self.seed, epoch, index)).randrange(len(views)) if self.view == "random" else self.view
        shard, row = self.dataset.locate(index)
        codes = torch.from_numpy(views[v].astype("int64"))
        record = self.dataset.record(shard)
        if self.captions:
            captions = record.get("captions")
            return codes, caption_of(captions[row] if captions is not None else None)
        labels = record.get("labels")
        return codes, int(labels[row]) if labels is not None else -1

    def collate(self, items: list[tuple[Tensor, Any]]) -> dict[str, Any]:
        return collate_items(items, self.captions)


class ImageItems:
    """Decode + collate for labelled samples (``LabeledSample``) whose ``image`` is an image (``{"images", "labels"}``;
    the VQ computes the codes in ``losses``) or codes computed once beforehand, an integer tensor ``[N]``
    (``{"codes", "labels"}``, as from tokenized data); with ``captions=True``, captioned samples (``"captions"``
    instead of ``"labels"``)."""

    def __init__(self, image_size: int, max_pixels: int | None, captions: bool = False) -> None:
        self.image_size, self.max_pixels, self.captions = image_size, max_pixels, captions

    def decode(self, s: RawSample) -> tuple[Tensor, Any]:
        condition = caption_of(s.caption) if self.captions else int(getattr(s, "label", -1))
        if isinstance(s.image, Tensor) and not s.image.is_floating_point():
            return s.image.long(), condition
        return decode_image(s.image, self.image_size, "shortest", self.max_pixels), condition

    def collate(self, items: list[tuple[Tensor, Any]]) -> dict[str, Any]:
        return collate_items(items, self.captions)


class GeneratorTask:
    """Next-token prediction of VQ codes, conditioned on class labels (c2i) or captions (t2i)."""

    name = "gen"

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = parse_options(options)

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        parse_options(options)

    def setup(self, cfg: TrainConfig, info: DistInfo, *, model: nn.Module | None = None, source: Any = None) -> None:
        """``model``: a generator from ``build_generator`` (its tokenizer, and for t2i its caption encoder, attached);
        ``source``: labelled (or captioned, t2i) image samples instead of ``data.path``."""
        from toklip.gen.generator import build_generator, caption_encoder_of, resolve_tokenizer, tokenizer_of

        o = self.options
        path = cfg.data.path
        if path is None and source is None:
            raise ConfigError("data.path: the output folder of `toklip tokenize` (or a class folder of images)")
        self.tokens = source is None and (Path(str(path)).expanduser() / "manifest.json").is_file()
        tok = tokenizer_of(model) if model is not None else None
        if tok is None:
            tok, _ = resolve_tokenizer(o.tokenizer)
        self.tokenizer = tok
        encoder = caption_encoder_of(model) if model is not None else None
        if encoder is None and o.caption_encoder is not None:
            from toklip.gen.captions import CaptionEncoder

            encoder = CaptionEncoder.from_pretrained(o.caption_encoder)
        self.t2i = encoder is not None or (model is not None and model.model_type == "t2i")
        classes: list[str] | None = None
        if self.tokens:
            self.items: Any = TokenItems(str(path), seed=cfg.train.seed, view=o.view, captions=self.t2i)
            ds = self.items.dataset
            self.source = IndexSource(len(ds), f"tokens {path}")
            classes = ds.classes
            self._check_tokens_fit(ds, tok)
            first = next((i for i, shard in enumerate(ds.shards) if shard["count"]), None)
            if self.t2i and first is not None and "captions" not in ds.record(first):
                raise ConfigError(f"the tokens in {path} have no captions: a t2i generator trains on captioned data "
                                  "(tokenize a CSV/TSV, JSONL, WebDataset or a folder with a .txt caption beside each "
                                  "image)")
        else:
            if tok is None:
                raise ConfigError(f"{path} is not a `toklip tokenize` output folder; to train from images directly "
                                  "give task.tokenizer (its VQ computes the codes)")
            if source is None:
                from toklip.data.readers import open_images

                opened = open_images(path, cfg.data.type if cfg.data.type in ("auto", "class-folder") else "auto")
                if self.t2i and not opened.has_captions:
                    raise ConfigError(f"{path} ({opened.kind}) has no captions: a t2i generator trains on captioned "
                                      "images (CSV/TSV, JSONL, WebDataset, or a folder with a .txt beside each image)")
                if not self.t2i and opened.classes is None:
                    raise ConfigError(f"{path}: class-conditional training needs class labels (ImageNet-style class "
                                      "folders) or tokenized data with labels")
                source, classes = opened.source, opened.classes
            self.source = source
            self.items = ImageItems(tok.image_size, cfg.data.max_pixels, captions=self.t2i)
        self.classes = None if self.t2i else classes
        if model is None:
            overrides = {**o.overrides, "class_dropout_prob": o.class_dropout}
            num_classes = None
            if not self.t2i:
                num_classes = o.num_classes or (len(classes) if classes else None)
                if num_classes is None:
                    raise ConfigError("task.num_classes: the data has no class list; say how many classes there are")
            if tok is None:  # plain VQ codes from tokenized data: sizes from its manifest
                overrides.setdefault("vocab_size", self.items.dataset.vocab_size)
                h, w = self.items.dataset.grid
                overrides.setdefault("block_size", h * w)
            model = build_generator(o.generator, tokenizer=tok, fusion=o.fusion, feature_layer=o.feature_layer,
                                    num_classes=num_classes, caption_encoder=encoder, **overrides)
            if tok is None and self.tokens:
                model.toklip_meta["tokenizer"] = self._tokens_tokenizer_record()
        if model.model_type == "t2i" and encoder is None:
            raise needs_caption_encoder(o.generator)
        if model.model_type != "t2i" and encoder is not None:
            raise ConfigError(f"task.caption_encoder is for text-conditional generators; {o.generator} is "
                              "class-conditional (c2i)")
        model.to(info.device).train()
        if tok is not None:
            tok.to(info.device)
        if encoder is not None:
            encoder.to(info.device)  # frozen, eval mode, outside the module tree (never in checkpoints)
        self.model = model
        self.module = GenForward(model)

    def _check_tokens_fit(self, ds: Any, tok: Any) -> None:
        if tok is None:
            return
        from toklip.gen.generator import tokenizer_sizes
        from toklip.weights.identity import state_dict_sha256

        sizes = tokenizer_sizes(tok)
        if sizes["vocab_size"] != ds.vocab_size:
            raise ConfigError(f"the tokens in {ds.root} have a {ds.vocab_size}-code vocabulary; task.tokenizer's VQ "
                              f"has {sizes['vocab_size']}: they do not belong together")
        recorded = ds.manifest.get("tokenizer", {}).get("weights_sha256")
        if recorded and recorded != state_dict_sha256(getattr(tok, "vq", tok)):
            raise ConfigError(f"the tokens in {ds.root} were made by another VQ (weights sha256 {recorded[:12]}...) than "
                              "task.tokenizer's: fused features would not match the codes. Use the tokenizer "
                              "`toklip tokenize` ran with")

    def _tokens_tokenizer_record(self) -> dict[str, Any]:
        """What made the tokens: a model source ``toklip.load`` takes is recorded for decoding; a bare VQ is named
        (pass ``tokenizer=`` to ``load_generator`` to decode with it)."""
        t = self.items.dataset.manifest.get("tokenizer", {})
        return {"source": t.get("name") if t.get("source") == "model" else None, "vq": t.get("name"),
                "vq_sha256": t.get("weights_sha256"), "vocab_size": self.items.dataset.vocab_size}

    def stream(self, cfg: TrainConfig, info: DistInfo) -> BatchStream:
        return BatchStream(self.source, batch_size=cfg.data.batch_size, decode=self.items.decode,
                           collate=self.items.collate, rank=info.rank, world=info.world_size,
                           workers=cfg.data.workers, seed=cfg.train.seed, shuffle=cfg.data.shuffle)

    def losses(self, runner: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
        if "codes" in batch:
            codes = batch["codes"].to(device, non_blocking=True)
        else:
            with torch.no_grad():
                codes = self.tokenizer.vq.encode(batch["images"].to(device)).indices.flatten(1)
        if self.t2i:  # the frozen T5, no_grad; dropped captions become the uncond embedding in the model
            from toklip.gen.generator import encode_prompts

            cond, mask = encode_prompts(self.model, batch["captions"])
            logits = runner(codes, cond, mask)
        else:
            logits = runner(codes, batch["labels"].to(device, non_blocking=True))
        return {"ce": F.cross_entropy(logits.float().flatten(0, 1), codes.flatten())}

    def after_step(self) -> None:
        return None

    def log_values(self) -> dict[str, float]:
        return {}

    def save(self, directory: Path, state: dict[str, Tensor]) -> None:
        from toklip.gen.generator import save_generator

        save_generator(self.model, directory, state=state)

    def describe(self) -> str:
        meta = getattr(self.model, "toklip_meta", {})
        fusion = (meta.get("fusion") or {}).get("name")
        captions = (meta.get("caption_encoder") or {}).get("source")
        text = f", t2i, captions by {captions}" if captions else ""
        return (f"{meta.get('generator') or self.options.generator} "
                f"({f'fusion {fusion}' if fusion else 'plain VQ inputs'}{text})")
