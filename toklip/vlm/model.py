"""The VLM: a frozen TokLIP reads the images, a projector maps its per-token features to the LLM's width, and
any transformers causal LM reads them in place of ``<image>`` placeholders (LLaVA's composition).

Each ``<image>`` in a user turn becomes N positions (N: the TokLIP grid's token count) holding the image token
id; :meth:`VLM.embed` embeds the text and writes the projected features into those positions with
``masked_scatter``, so any decoder-only LM works unchanged through ``inputs_embeds`` (training, and ``generate``
with its KV cache). Images are given per sample, in the order their placeholders appear.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toklip.core.errors import ConfigError, InputError
from toklip.vlm.config import VLMConfig
from toklip.vlm.conversation import IGNORE_INDEX, IMAGE_TOKEN, TEMPLATES, encode_conversation, image_token_id, pad_batch
from toklip.vlm.features import FEATURE_SOURCES, ImageFeatures

STAGES = (1, 2)


def causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token cross-entropy over the labelled positions (labels -100 elsewhere); 0 when none is labelled
    (a batch of truncated replies), never NaN."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:].to(logits.device)
    count = (shift_labels != IGNORE_INDEX).sum()
    total = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return total / count.clamp(min=1)


def _as_conversation(item: Any, i: int) -> list[dict[str, Any]]:
    if isinstance(item, str):
        return [{"role": "user", "content": item}]
    if isinstance(item, Sequence) and not isinstance(item, (bytes, bytearray)):
        return list(item)
    raise InputError(f"prompt {i} must be a string or a list of chat turns, got {type(item).__name__}")


def _as_images(item: Any) -> list[Any]:
    if item is None:
        return []
    if isinstance(item, (list, tuple)):
        return list(item)
    if isinstance(item, Tensor) and item.dim() == 4:
        return list(item)
    return [item]


class VLM(nn.Module):
    """images + conversations -> text: ``features`` (frozen TokLIP) -> ``projector`` -> ``llm`` (any causal LM).

    ``tokenizer`` is the LLM's tokenizer (with ``<image>`` added as a special token, a pad token, and a chat
    template: its own, or :data:`toklip.vlm.conversation.SIMPLE_CHAT_TEMPLATE` when it has none)."""

    def __init__(self, features: ImageFeatures, projector: nn.Module, llm: nn.Module, tokenizer: Any,
                 config: VLMConfig) -> None:
        super().__init__()
        self.features = features
        self.projector = projector
        self.llm = llm
        self.tokenizer = tokenizer
        self.config = config
        self.image_token_id = image_token_id(tokenizer, config.image_token)
        self.num_image_tokens = features.num_tokens

    # ------------------------------------------------------------------ basics
    @property
    def toklip(self) -> nn.Module:
        return self.features.toklip

    @property
    def image_size(self) -> int:
        return int(self.features.toklip.image_size)

    @property
    def device(self) -> torch.device:
        return next(self.projector.parameters()).device

    def train(self, mode: bool = True) -> VLM:
        super().train(mode)
        self.features.train(False)  # the TokLIP tower is frozen throughout
        return self

    def describe(self) -> str:
        c = self.config
        tok = c.tokenizer.get("source") or getattr(self.toklip.config, "name", None) or "TokLIP"
        lora = f" + LoRA r={c.lora['r']}" if c.lora else ""
        what = "VQ codes" if c.features == "vq" else f"TokLIP features (layer {c.feature_layer})"
        return f"VLM: {tok} {what} -> {c.projector} -> {c.llm}{lora}"

    def to_pixels(self, image: Any) -> Tensor:
        """A path, bytes, PIL image or HWC uint8 array (checked by toklip's image loader), or a [3, S, S] tensor in
        [-1, 1] -> [3, S, S] at the TokLIP's size."""
        if isinstance(image, Tensor):
            if image.dim() != 3 or image.shape[0] != 3:
                raise InputError(f"an image tensor must be [3, H, W] in [-1, 1], got shape {tuple(image.shape)}")
            return image
        return self.features.toklip.preprocess(image)

    # ------------------------------------------------------------------ batches
    def prepare(self, conversations: Sequence[Any], images: Sequence[Any] | None = None, *,
                add_generation_prompt: bool = False, padding_side: str = "right", max_length: int | None = None,
                template: str | None = None) -> dict[str, Any]:
        """Conversations (a prompt string or chat turns each) and their images (None, one image, or a list per
        conversation) -> ``input_ids``, ``attention_mask``, ``labels`` [B, L] and ``images`` [M, 3, S, S] (or None),
        the images of every conversation in placeholder order. Placeholders and images must match exactly."""
        if isinstance(conversations, (str, Mapping)):
            raise InputError("prepare() takes a list of conversations; wrap a single one in a list")
        convs = [_as_conversation(c, i) for i, c in enumerate(conversations)]
        per = [_as_images(x) for x in images] if images is not None else [[] for _ in convs]
        if len(per) != len(convs):
            raise InputError(f"{len(convs)} conversation(s) but images for {len(per)}: give one entry per "
                             "conversation (None for text only)")
        template = template or self.config.template
        encoded = []
        for i, (conv, imgs) in enumerate(zip(convs, per)):
            enc = encode_conversation(self.tokenizer, conv, num_image_tokens=self.num_image_tokens,
                                      image_token=self.config.image_token, template=template,  # type: ignore[arg-type]
                                      add_generation_prompt=add_generation_prompt)
            check_placeholders(enc.num_images, len(imgs), self.config.image_token, where=f"conversation {i}")
            encoded.append(enc)
        batch: dict[str, Any] = pad_batch(encoded, pad_id=int(self.tokenizer.pad_token_id),
                                          padding_side=padding_side, max_length=max_length)
        pixels = [self.to_pixels(im) for imgs in per for im in imgs]
        batch["images"] = torch.stack(pixels) if pixels else None
        return batch

    # ------------------------------------------------------------------ the merge
    def encode_images(self, images: Tensor) -> Tensor:
        """images [M, 3, S, S] in [-1, 1] -> projected features [M, N, H] (the TokLIP part without gradients)."""
        return self.project(self.features(images.to(self.device)))

    def project(self, features: Tensor) -> Tensor:
        """Per-token features [M, N, D] (from ``self.features``, e.g. extracted once and cached) -> [M, N, H]."""
        weight = next(self.projector.parameters())
        return self.projector(features.to(weight.device, weight.dtype))

    def embed(self, input_ids: Tensor, images: Tensor | None = None, *,
              image_features: Tensor | None = None) -> Tensor:
        """input_ids [B, L] (image positions hold the image token id) -> inputs_embeds [B, L, H]. The images are
        given as pixels [M, 3, S, S], or as ``image_features`` [M, N, D] already read by the frozen TokLIP."""
        if images is not None and image_features is not None:
            raise InputError("give the images as pixels or as image_features, not both")
        input_ids = input_ids.to(self.device)
        mask = input_ids == self.image_token_id
        source = images if images is not None else image_features
        n_images = 0 if source is None else int(source.shape[0])
        n_positions = int(mask.sum())
        if n_positions != n_images * self.num_image_tokens:
            raise InputError(
                f"the batch has {n_positions} image-token positions ({n_positions / self.num_image_tokens:g} images of "
                f"{self.num_image_tokens} tokens) but {n_images} image(s) were given: each {self.config.image_token!r} "
                f"placeholder needs one image, expanded by prepare()")
        embeddings = self.llm.get_input_embeddings()
        x = embeddings(input_ids.masked_fill(mask, 0))  # the image id may lie outside the embedding table
        if n_images:
            feats = self.encode_images(images) if images is not None else self.project(image_features)  # type: ignore[arg-type]
            x = x.masked_scatter(mask.unsqueeze(-1), feats.to(x.dtype))
        return x

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None,
                images: Tensor | None = None, image_features: Tensor | None = None) -> dict[str, Tensor]:
        """-> ``logits`` [B, L, V] and, with labels, the next-token ``loss`` over the labelled positions."""
        embeds = self.embed(input_ids, images, image_features=image_features)
        mask = None if attention_mask is None else attention_mask.to(embeds.device)
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
        result = {"logits": out.logits}
        if labels is not None:
            result["loss"] = causal_lm_loss(out.logits, labels)
        return result

    # ------------------------------------------------------------------ generation
    def _generate_inputs(self, prompts: Sequence[Any], images: Sequence[Any] | None,
                         generate_kwargs: dict[str, Any]) -> dict[str, Any]:
        batch = self.prepare(prompts, images, add_generation_prompt=True, padding_side="left")
        embeds = self.embed(batch["input_ids"], batch["images"])
        kwargs = dict(generate_kwargs)
        gen_cfg = getattr(self.llm, "generation_config", None)
        if kwargs.get("pad_token_id") is None and getattr(gen_cfg, "pad_token_id", None) is None:
            kwargs["pad_token_id"] = int(self.tokenizer.pad_token_id)
        if kwargs.get("eos_token_id") is None and getattr(gen_cfg, "eos_token_id", None) is None:
            kwargs["eos_token_id"] = self.tokenizer.eos_token_id
        return {"inputs_embeds": embeds, "attention_mask": batch["attention_mask"].to(embeds.device), **kwargs}

    @torch.no_grad()
    def generate_ids(self, prompts: Sequence[Any], images: Sequence[Any] | None = None, *, max_new_tokens: int = 64,
                     **generate_kwargs: Any) -> Tensor:
        """The new token ids [B, T] (left-padded prompts, ``llm.generate(inputs_embeds=...)``, KV cache on)."""
        inputs = self._generate_inputs(prompts, images, generate_kwargs)
        return self.llm.generate(**inputs, max_new_tokens=max_new_tokens)

    def generate(self, prompts: Sequence[Any], images: Sequence[Any] | None = None, *, max_new_tokens: int = 64,
                 **generate_kwargs: Any) -> list[str]:
        """One reply per prompt (a string or chat turns), with that prompt's images (None, one, or a list).
        ``generate_kwargs`` go to transformers' ``generate`` (``do_sample``, ``temperature``, ``use_cache``...)."""
        ids = self.generate_ids(prompts, images, max_new_tokens=max_new_tokens, **generate_kwargs)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def chat(self, image: Any, prompt: str, max_new_tokens: int = 64, stream: bool = False,
             **generate_kwargs: Any) -> str | Iterator[str]:
        """Reply to ``prompt`` about ``image`` (a path, bytes, PIL image, array or tensor; a list for several;
        None for text only). Without a ``<image>`` in the prompt the images go before it. ``stream=True`` returns
        an iterator of text pieces as they are generated (transformers' TextIteratorStreamer)."""
        if not isinstance(prompt, str):
            raise InputError(f"prompt must be a string, got {type(prompt).__name__}")
        images = _as_images(image)
        tag = self.config.image_token
        if images and tag not in prompt:
            prompt = f"{tag}\n" * len(images) + prompt
        conv = [{"role": "user", "content": prompt}]
        if not stream:
            return self.generate([conv], [images], max_new_tokens=max_new_tokens, **generate_kwargs)[0]
        return self.stream([conv], [images], max_new_tokens=max_new_tokens, **generate_kwargs)

    def stream(self, prompts: Sequence[Any], images: Sequence[Any] | None = None, *, max_new_tokens: int = 64,
               timeout: float | None = None, **generate_kwargs: Any) -> Iterator[str]:
        """Text pieces of the reply to one prompt, as generated. Bad inputs raise here, before any iteration."""
        from threading import Thread

        from transformers import TextIteratorStreamer

        if len(prompts) != 1:
            raise InputError("streaming generates one reply at a time: give one prompt")
        with torch.no_grad():
            inputs = self._generate_inputs(prompts, images, generate_kwargs)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                self.llm.generate(**inputs, max_new_tokens=max_new_tokens, streamer=streamer)
            except BaseException as e:  # noqa: BLE001 - handed to the reading thread
                errors.append(e)
                streamer.end()

        thread = Thread(target=run, daemon=True)
        thread.start()

        def pieces() -> Iterator[str]:
            try:
                for text in streamer:
                    if text:
                        yield text
            finally:
                thread.join()
            if errors:
                raise errors[0]

        return pieces()

    # ------------------------------------------------------------------ what trains
    def set_stage(self, stage: int) -> VLM:
        """Stage 1: the projector only. Stage 2: projector + LLM (only its LoRA adapters when it has them).
        The TokLIP tower never trains."""
        if stage not in STAGES:
            raise ConfigError(f"stage must be 1 (projector only) or 2 (projector + LLM), got {stage!r}")
        self.features.requires_grad_(False)
        self.projector.requires_grad_(True)
        if stage == 1:
            if self.config.lora:
                raise ConfigError("stage 1 trains the projector only; LoRA adapters are a stage-2 option")
            self.llm.requires_grad_(False)
            self.config.llm_trained = False
        elif self.config.lora:
            for name, p in self.llm.named_parameters():
                p.requires_grad_(".lora_" in f".{name}")
        else:
            self.llm.requires_grad_(True)
            self.config.llm_trained = True
        return self

    def apply_lora(self, options: Mapping[str, Any]) -> VLM:
        """Wrap the LLM in peft LoRA adapters (``{r, alpha, dropout, target_modules}``)."""
        from toklip.vlm.lora import apply_lora, is_peft, lora_options

        if is_peft(self.llm):
            raise ConfigError("the LLM already has LoRA adapters")
        opts = lora_options(options)
        self.llm = apply_lora(self.llm, opts)
        self.config.lora = opts
        self.config.llm_trained = False
        return self

    def merge_lora(self) -> VLM:
        """Fold the LoRA adapters into the LLM's weights (same outputs, no adapter overhead); the LLM then counts
        as trained, so save_pretrained writes it whole."""
        from toklip.vlm.lora import is_peft

        if not is_peft(self.llm):
            raise ConfigError("the LLM has no LoRA adapters to merge")
        self.llm = self.llm.merge_and_unload()
        self.config.lora = None
        self.config.llm_trained = True
        return self

    def fsdp_units(self) -> list[nn.Module]:
        """What FSDP shards one by one: the frozen TokLIP's blocks and the LLM's decoder layers (the longest
        ModuleList in the LLM: ``model.layers`` in Llama/Qwen/Mistral, ``transformer.h`` in GPT-2)."""
        lists = [m for m in self.llm.modules() if isinstance(m, nn.ModuleList)]
        return [*getattr(self.toklip, "fsdp_units", list)(), *(max(lists, key=len) if lists else [])]

    # ------------------------------------------------------------------ files
    def save_pretrained(self, directory: str | Path, *, state: dict[str, Tensor] | None = None,
                        full_state: bool = False) -> Path:
        """Write config.json + model.safetensors with what trained (projector; LoRA adapters or the whole LLM
        when it trained) and, when the TokLIP cannot be rebuilt from a source, toklip.safetensors + toklip.json.
        ``toklip.vlm.load_vlm(directory)`` rebuilds the whole model."""
        from toklip.vlm.saving import save_vlm

        return save_vlm(self, directory, state=state, full_state=full_state)


def check_placeholders(placeholders: int, images: int, tag: str, *, where: str) -> None:
    """Every placeholder needs one image and every image one placeholder: an InputError naming the fix."""
    if placeholders == images:
        return
    if placeholders == 0:
        raise InputError(f"{where}: {images} image(s) given but the text has no {tag!r} placeholder; put {tag!r} "
                         "where each image goes (VLM.chat adds it in front of the prompt for you)")
    if images == 0:
        raise InputError(f"{where}: the text has {placeholders} {tag!r} placeholder(s) but no image was given")
    raise InputError(f"{where}: the text has {placeholders} {tag!r} placeholder(s) but {images} image(s) were given")


# ---------------------------------------------------------------------------------------------- building
def resolve_tokenizer(tokenizer: Any, *, pretrained: bool | str = False) -> tuple[nn.Module, dict[str, Any]]:
    """-> (TokLIP model, the reference config.json records). A reference with a ``source`` rebuilds the same
    weights (a saved folder, a hub id, a checkpoint file, a preset with its released weights); ``source: None``
    means the weights must be saved with the VLM (a random-init preset, a model object)."""
    import toklip
    from toklip.weights.hub import is_hub_repo_id

    if isinstance(tokenizer, nn.Module):
        if not hasattr(tokenizer, "tokenize") or not hasattr(tokenizer, "grid"):
            raise ConfigError(f"tokenizer must be a TokLIP model (toklip.load / toklip.build), got "
                              f"{type(tokenizer).__name__}")
        return tokenizer, {"source": None}
    if not isinstance(tokenizer, (str, Path)) or not str(tokenizer):
        raise ConfigError(f"tokenizer must be a toklip preset name, a saved folder, a hub id or a TokLIP model, "
                          f"got {tokenizer!r}")
    text = str(tokenizer)
    path = Path(text).expanduser()
    if path.exists() and not (path.is_file() and path.suffix == ".json"):
        return toklip.load(path), {"source": str(path.resolve())}
    if not path.exists() and is_hub_repo_id(text):
        return toklip.load(text), {"source": text}
    model = toklip.build(text, pretrained=pretrained)
    if pretrained:
        return model, {"source": text if not path.exists() else str(path.resolve()), "pretrained": pretrained}
    return model, {"source": None}


def assemble(toklip_model: nn.Module, tokenizer_ref: dict[str, Any], llm: str | Path, *,
             projector: str = "mlp2x_gelu", projector_kwargs: Mapping[str, Any] | None = None, feature_layer: int = -1,
             features: str = "toklip", template: str = "chat", image_token: str = IMAGE_TOKEN,
             dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> VLM:
    """The VLM from a TokLIP model and an LLM source (what build_vlm and load_vlm share)."""
    from toklip.vlm.llm import hidden_size, load_llm
    from toklip.vlm.projectors import build_vlm_projector

    if features not in FEATURE_SOURCES:
        raise ConfigError(f"features must be one of {FEATURE_SOURCES} (TokLIP features or the VQ-only baseline), "
                          f"got {features!r}")
    if template not in TEMPLATES:
        raise ConfigError(f"template must be one of {TEMPLATES}, got {template!r}")
    if not isinstance(feature_layer, int) or isinstance(feature_layer, bool):
        raise ConfigError(f"feature_layer must be an integer (-1: final features, -2: LLaVA's penultimate), "
                          f"got {feature_layer!r}")
    if not isinstance(image_token, str) or not image_token.strip():
        raise ConfigError(f"image_token must be a non-empty string, got {image_token!r}")
    kwargs = dict(projector_kwargs or {})
    image_features = ImageFeatures(toklip_model, feature_layer=feature_layer, features=features)  # type: ignore[arg-type]
    lm, lm_tokenizer, _ = load_llm(llm, dtype=dtype)
    width = hidden_size(lm)
    proj = build_vlm_projector(projector, image_features.dim, width, **kwargs)
    llm_source = str(Path(llm).expanduser().resolve()) if Path(str(llm)).expanduser().is_dir() else str(llm)
    config = VLMConfig(tokenizer=dict(tokenizer_ref), llm=llm_source, projector=projector, projector_kwargs=kwargs,
                       feature_layer=feature_layer, features=features, template=template, image_token=image_token,
                       feature_dim=image_features.dim, hidden_size=width, num_image_tokens=image_features.num_tokens)
    vlm = VLM(image_features, proj, lm, lm_tokenizer, config)
    if dtype is not None:
        vlm.projector.to(dtype)
        vlm.features.toklip.to(dtype)
        vlm.features.toklip.vq.float()  # its codebook search is where reduced precision shows
    if device is not None:
        vlm.to(device)
    return vlm.eval()


def build_vlm(*, tokenizer: Any, llm: str | Path, projector: str = "mlp2x_gelu", feature_layer: int = -1,
              features: str = "toklip", pretrained: bool | str = False, dtype: torch.dtype | None = None,
              device: str | torch.device | None = None, template: str = "chat",
              projector_kwargs: Mapping[str, Any] | None = None, lora: Mapping[str, Any] | None = None,
              image_token: str = IMAGE_TOKEN) -> VLM:
    """A VLM from a TokLIP (``tokenizer``: a preset name, a ``save_pretrained`` folder, a hub id or a model from
    ``toklip.load``/``toklip.build``) and any transformers causal LM (``llm``: a local folder or a hub id; hub
    ids resolve through the Hugging Face cache, ``trust_remote_code`` is never set, only safetensors load).

    ``pretrained`` applies to a preset tokenizer (its released weights). ``features="vq"`` is the VQ-only
    baseline (the paper's VQGAN row: code vectors instead of TokLIP features). ``feature_layer`` -1 reads the
    final features, -2 the penultimate block (LLaVA's choice). ``projector`` is a registered ``vlm_projector``
    (``mlp2x_gelu``, ``linear``, or a plugin's). ``template="chat"`` uses the LLM tokenizer's chat template (the
    simple ``role: text`` fallback when it has none); ``"plain"`` is LLaVA's stage-1 captioning layout.
    ``lora={r, alpha, ...}`` wraps the LLM in LoRA adapters. Returns the model in eval mode.
    """
    toklip_model, ref = resolve_tokenizer(tokenizer, pretrained=pretrained)
    vlm = assemble(toklip_model, ref, llm, projector=projector, projector_kwargs=projector_kwargs,
                   feature_layer=feature_layer, features=features, template=template, image_token=image_token,
                   dtype=dtype, device=device)
    if lora is not None:
        vlm.apply_lora(lora)
        if device is not None:
            vlm.to(device)
    return vlm
