"""The caption encoder of text-conditional (t2i) generators: a frozen T5 encoder that turns prompts into the
caption features ``[B, T, D]`` and mask ``[B, T]`` LlamaGen's t2i GPT reads.

LlamaGen (``language/t5.py``, ``autoregressive/sample/sample_t2i.py``, ``dataset/t2i.py``) encodes captions with
flan-t5-xl (``last_hidden_state``, 2048-d), ``T = cls_token_num = 120`` tokens, T5's ``</s>`` appended and long
captions truncated. Its t2i GPT was trained on **left-padded** captions: the real tokens' features at the end of
the 120 rows, zeros before them, and a mask hiding the zero rows (the dataset copies a caption's stored features
into ``[-len:]`` of a zero tensor); its sampler left-pads the same way by default (``--no-left-padding`` off). The
encoder itself still runs on the right-padded batch its tokenizer makes, with an attention mask, so a caption's
features do not depend on how long its batch-mates are. ``encode`` gives exactly that layout.

Weights load only through ``from_pretrained`` from safetensors with ``trust_remote_code=False``; a hub id downloads
the config, tokenizer and ``*.safetensors`` files alone (toklip.weights.hub). The encoder is held by the generator
outside its module tree, so it is never saved with the generator, trained, or put in a checkpoint: the generator's
folder records where it came from (``describe``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from toklip.core.errors import CheckpointError, ConfigError, InputError

# the names LlamaGen uses for its caption encoders -> hub repos (any T5 encoder folder or hub id also works)
CAPTION_ENCODERS = {"flan-t5-xl": "google/flan-t5-xl"}
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "tokenizer*"]  # config, tokenizer, weights: never pickles
MAX_PROMPTS = 4096  # prompts per encode call: more is a mistake (split them), not a batch
MAX_PROMPT_CHARS = 8192  # far beyond 120 tokens; bounds the tokenizer's work on a hostile string
DEFAULT_LENGTH = 120  # LlamaGen's cls_token_num / t5_feature_max_len


class CaptionEncoder:
    """A frozen T5 encoder and its tokenizer. ``encode(prompts)`` -> ``(features [B, T, D], mask [B, T] bool)``,
    left-padded (see the module docstring). ``lowercase``: LlamaGen lowercases and cleans captions both when it
    extracts training features and when it samples (PixArt's ``clean_caption``); toklip lowercases and collapses
    white space, and does not reproduce the rest of that cleaning (URLs, HTML, CJK removal)."""

    def __init__(self, model: Any, tokenizer: Any, *, source: str | None = None, lowercase: bool = True,
                 max_length: int = DEFAULT_LENGTH) -> None:
        if tokenizer.pad_token_id is None:
            raise ConfigError(f"the caption encoder's tokenizer ({source}) has no pad token; T5 tokenizers have <pad>")
        if not isinstance(max_length, int) or max_length < 1:
            raise ConfigError(f"max_length must be a positive integer, got {max_length!r}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.source, self.lowercase, self.max_length = source, bool(lowercase), max_length

    @classmethod
    def from_pretrained(cls, source: str | Path, *, lowercase: bool = True, max_length: int = DEFAULT_LENGTH,
                        device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> CaptionEncoder:
        """A T5 encoder folder (``config.json``, tokenizer files, ``*.safetensors``), a hub id, or a name of
        :data:`CAPTION_ENCODERS` (``flan-t5-xl``). A full encoder-decoder T5 folder works: the decoder is not
        loaded. ``dtype`` defaults to float32 (T5 overflows in float16; bfloat16 is fine)."""
        from transformers import AutoConfig, AutoTokenizer, T5EncoderModel

        from toklip.weights.hub import check_model_folder

        folder, recorded = resolve_caption_encoder(source)
        check_model_folder(folder, "T5")
        try:
            config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
            if config.model_type != "t5":
                raise ConfigError(f"{folder} holds a {config.model_type!r} model; the caption encoder is a T5 encoder "
                                  "(model_type 't5', e.g. google/flan-t5-xl)")
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
            with _quiet_loading():
                model = T5EncoderModel.from_pretrained(folder, trust_remote_code=False, use_safetensors=True,
                                                       dtype=dtype or torch.float32)
        except ValueError as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"{folder} is not a T5 encoder transformers can build without remote code "
                              f"(toklip never sets trust_remote_code): {str(e).splitlines()[0]}") from e
        except OSError as e:
            raise CheckpointError(f"could not read the caption encoder in {folder}: {str(e).splitlines()[0]}") from e
        encoder = cls(model, tokenizer, source=recorded, lowercase=lowercase, max_length=max_length)
        return encoder.to(device) if device is not None else encoder

    # ------------------------------------------------------------------ properties
    @property
    def width(self) -> int:
        """Feature size D (T5's d_model; flan-t5-xl: 2048). A t2i generator's caption_dim must equal it."""
        return int(self.model.config.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> CaptionEncoder:
        self.model.to(device=device, dtype=dtype)
        return self

    def describe(self) -> dict[str, Any]:
        """What a generator folder records: where the encoder comes from (never its weights)."""
        return {"source": self.source, "lowercase": self.lowercase, "width": self.width}

    def check_fits(self, caption_dim: int, where: str = "the generator") -> None:
        if self.width != caption_dim:
            raise ConfigError(
                f"the caption encoder {self.source or ''} gives {self.width}-d features but {where} reads "
                f"caption_dim={caption_dim}: use the encoder it was trained with (LlamaGen's t2i models: flan-t5-xl, "
                f"2048-d), or build the generator with caption_dim={self.width}")

    # ------------------------------------------------------------------ encoding
    def normalize(self, prompt: str) -> str:
        text = " ".join(prompt.split())
        return text.lower() if self.lowercase else text

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], *, length: int | None = None) -> tuple[Tensor, Tensor]:
        """Prompts -> ``(features [B, T, D], mask [B, T] bool)`` with ``T = length`` (default ``max_length``; a
        generator passes its cls_token_num). Captions longer than T tokens are truncated (``</s>`` kept last).
        Left-padded: row b's ``k`` real tokens are ``[T - k:]``, the rows before them are zero and masked out."""
        texts = check_prompts(prompts)
        length = self.max_length if length is None else length
        if not isinstance(length, int) or length < 1:
            raise InputError(f"length must be a positive integer, got {length!r}")
        self.tokenizer.padding_side = "right"  # T5's own layout; the encoder runs on it, then rows are moved
        batch = self.tokenizer([self.normalize(t) for t in texts], max_length=length, padding="max_length",
                               truncation=True, add_special_tokens=True, return_attention_mask=True,
                               return_tensors="pt")
        device = self.device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device).bool()
        hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return left_pad(hidden, mask)


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """No "Loading weights" progress bar from transformers (it would land in `toklip generate`'s output)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def left_pad(features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Right-padded ``features [B, T, D]`` / ``mask [B, T]`` -> left-padded (LlamaGen's layout): each row's ``k``
    real tokens move to ``[T - k:]`` in order, padded rows become zero, and the mask is flipped to match."""
    length = features.shape[1]
    counts = mask.sum(dim=1, keepdim=True)  # [B, 1]
    source = (torch.arange(length, device=features.device)[None] + counts) % length  # row j reads j + k (mod T)
    moved = features.gather(1, source[..., None].expand(-1, -1, features.shape[2]))
    left_mask = mask.flip(1)
    return moved.masked_fill(~left_mask[..., None], 0.0), left_mask


MAX_PROMPT_FILE_BYTES = 256 << 20  # COCO-30k captions are ~2 MB


def read_prompt_file(path: str | Path) -> list[str]:
    """A prompt file: one caption per line (UTF-8; blank lines skipped), as LlamaGen's t2i evaluation reads COCO
    captions. Bounded in size; each prompt checked like a request's."""
    from toklip.core.io import read_bounded

    data = read_bounded(path, "prompt", max_bytes=MAX_PROMPT_FILE_BYTES)
    try:
        lines = [line.strip() for line in data.decode("utf-8").splitlines()]
    except UnicodeDecodeError as e:
        raise ConfigError(f"prompt file {path} is not UTF-8 text: {e}") from e
    prompts = [line for line in lines if line]
    if not prompts:
        raise ConfigError(f"prompt file {path} holds no prompt (one caption per line)")
    for i, prompt in enumerate(prompts):
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ConfigError(f"prompt {i} of {path} has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    return prompts


def check_prompts(prompts: Any) -> list[str]:
    """A non-empty list of non-blank strings, each at most MAX_PROMPT_CHARS, at most MAX_PROMPTS of them."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise InputError(f"prompts must be a list of strings (one per image), got {type(prompts).__name__}"
                         + (": wrap one prompt in a list, [prompt]" if isinstance(prompts, str) else ""))
    if len(prompts) == 0:
        raise InputError("prompts is empty: give at least one prompt")
    if len(prompts) > MAX_PROMPTS:
        raise InputError(f"{len(prompts)} prompts in one call is over the limit of {MAX_PROMPTS}; split them into "
                         "batches")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InputError(f"prompt {i} is {type(p).__name__}, not a string")
        if not p.strip():
            raise InputError(f"prompt {i} is empty; describe the image (for unconditional samples use the generator's "
                             "null caption through cfg)")
        if len(p) > MAX_PROMPT_CHARS:
            raise InputError(f"prompt {i} has {len(p)} characters, over the limit of {MAX_PROMPT_CHARS}; only the "
                             "first tokens are read anyway: shorten it")
    return list(prompts)


def resolve_caption_encoder(source: str | Path) -> tuple[Path, str]:
    """A caption encoder source -> (its local folder, what a generator folder records: the absolute folder of a
    local one, else the hub id or name as given). Names of :data:`CAPTION_ENCODERS` map to their hub repos."""
    from toklip.weights.hub import hub_model_folder, is_hub_repo_id

    if not isinstance(source, (str, Path)) or not str(source):
        raise ConfigError(f"caption_encoder must be a T5 encoder folder, a hub id or one of "
                          f"{', '.join(CAPTION_ENCODERS)}; got {source!r}")
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        return hub_model_folder(path, what="T5 encoder", option="caption_encoder", patterns=HUB_PATTERNS,
                                contents="config.json, tokenizer files, *.safetensors"), str(path.resolve())
    repo = CAPTION_ENCODERS.get(text, text)
    if not is_hub_repo_id(repo):
        raise ConfigError(
            f"the caption encoder folder {text!r} does not exist here (and it is not a hub id 'owner/name' or one of "
            f"{', '.join(CAPTION_ENCODERS)}); give a T5 encoder folder (config.json, tokenizer files, *.safetensors) "
            "or a hub id such as google/flan-t5-xl")
    return hub_model_folder(repo, what="T5 encoder", option="caption_encoder", patterns=HUB_PATTERNS,
                            contents="config.json, tokenizer files, *.safetensors"), text


def as_caption_encoder(value: Any, **kwargs: Any) -> CaptionEncoder:
    """A CaptionEncoder as is, or a source (folder, hub id, name) loaded with ``CaptionEncoder.from_pretrained``."""
    if isinstance(value, CaptionEncoder):
        return value
    if isinstance(value, (str, Path)):
        return CaptionEncoder.from_pretrained(value, **kwargs)
    raise ConfigError(f"caption_encoder must be a CaptionEncoder, a T5 encoder folder, a hub id or one of "
                      f"{', '.join(CAPTION_ENCODERS)}; got {type(value).__name__}")
