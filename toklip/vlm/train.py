"""The ``vlm`` training task: LLaVA-1.5's two stages on the existing trainer.

Stage 1 trains the projector only (LLaVA's feature alignment, ``plain`` template by default); stage 2 trains the
projector and the LLM, or the projector and LoRA adapters (``lora: {r, alpha}``), with the LLM's chat template.
The TokLIP tower is frozen throughout. Options (the config's ``task`` section)::

    task: {name: vlm, tokenizer: toklip-l-384, pretrained: true, llm: Qwen/Qwen2.5-7B-Instruct,
           projector: mlp2x_gelu, feature_layer: -1, features: toklip, stage: 1, max_length: 2048,
           images: /data/558k}
    task: {name: vlm, init: runs/vlm-stage1, stage: 2, lora: {r: 128, alpha: 256}, images: /data/mix665k}

``init`` starts from a VLM folder or a run (stage 2 from stage 1's projector; its tokenizer, LLM, projector and
features come from there). ``data.path`` is the LLaVA JSON file, or WebDataset shards of its records. The
trainer owns processes, precision, the optimizer, checkpoints and resume; each checkpoint's model folder is a VLM folder (``toklip.vlm.load_vlm``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from toklip.core.errors import ConfigError

# Checkpoints hold what trains (projector; LoRA or the LLM in stage 2): resume rebuilds the frozen TokLIP and base
# LLM from their sources and loads the trained tensors over them (toklip.train.checkpoint.load_model_state).
FULL_STATE_CHECKPOINTS = False

OPTIONS: dict[str, Any] = {
    "tokenizer": None, "pretrained": False, "llm": None, "projector": "mlp2x_gelu", "projector_kwargs": {},
    "feature_layer": -1, "features": "toklip", "stage": 1, "lora": None, "max_length": 2048, "images": None,
    "template": None, "init": None,
}
FROM_INIT = ("tokenizer", "pretrained", "llm", "projector", "projector_kwargs", "feature_layer", "features")


def check_task_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The task section merged over the defaults, or a ConfigError naming the key and the fix."""
    from toklip.vlm.config import check_keys
    from toklip.vlm.conversation import TEMPLATES
    from toklip.vlm.features import FEATURE_SOURCES
    from toklip.vlm.lora import lora_options

    check_keys(options, OPTIONS, "the vlm task section")
    o = {**OPTIONS, **dict(options)}
    if o["init"] is not None:
        given = [k for k in FROM_INIT if k in options]
        if given:
            raise ConfigError(f"task.init takes {', '.join(given)} from the VLM folder it names; drop them")
        if not isinstance(o["init"], str):
            raise ConfigError(f"task.init must be a VLM folder or training run, got {o['init']!r}")
    else:
        for key in ("tokenizer", "llm"):
            if not isinstance(o[key], str) or not o[key]:
                raise ConfigError(f"task.{key} is required (a {'toklip preset or folder' if key == 'tokenizer' else 'causal LM folder or hub id'}), "
                                  f"got {o[key]!r}; or give task.init=VLM_FOLDER")
        if not isinstance(o["projector"], str):
            raise ConfigError(f"task.projector must be a VLM projector name, got {o['projector']!r}")
        if not isinstance(o["projector_kwargs"], Mapping):
            raise ConfigError(f"task.projector_kwargs must be a mapping, got {o['projector_kwargs']!r}")
        if not isinstance(o["feature_layer"], int) or isinstance(o["feature_layer"], bool):
            raise ConfigError(f"task.feature_layer must be an integer, got {o['feature_layer']!r}")
        if o["features"] not in FEATURE_SOURCES:
            raise ConfigError(f"task.features must be one of {FEATURE_SOURCES}, got {o['features']!r}")
        if not isinstance(o["pretrained"], (bool, str)):
            raise ConfigError(f"task.pretrained must be true, false or a weights tag, got {o['pretrained']!r}")
    if o["stage"] not in (1, 2) or isinstance(o["stage"], bool):
        raise ConfigError(f"task.stage must be 1 (projector only) or 2 (projector + LLM), got {o['stage']!r}")
    if o["lora"] is not None:
        if o["stage"] != 2:
            raise ConfigError("task.lora is a stage-2 option (stage 1 trains the projector only)")
        o["lora"] = lora_options(o["lora"])
    if o["template"] is None:
        o["template"] = "plain" if o["stage"] == 1 else "chat"
    if o["template"] not in TEMPLATES:
        raise ConfigError(f"task.template must be one of {TEMPLATES}, got {o['template']!r}")
    if o["max_length"] is not None and (not isinstance(o["max_length"], int) or isinstance(o["max_length"], bool)
                                        or o["max_length"] <= 0):
        raise ConfigError(f"task.max_length must be a positive integer or null, got {o['max_length']!r}")
    if o["images"] is not None and not isinstance(o["images"], str):
        raise ConfigError(f"task.images must be a folder path, got {o['images']!r}")
    return o


class VLMForward(nn.Module):
    """What DDP/FSDP wrap: the VLM as ``.model`` (the checkpoints' key prefix) and a forward that returns the loss."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, images: Tensor) -> Tensor:
        return self.model(input_ids, attention_mask, labels, images)["loss"]


class VLMTask:
    """LLaVA conversations -> the next-token loss on the replies (``toklip.vlm.model.causal_lm_loss``)."""

    name = "vlm"
    checkpoints_trained_only = not FULL_STATE_CHECKPOINTS

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = check_task_options(options)

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        check_task_options(options)

    def setup(self, cfg: Any, info: Any, *, model: nn.Module | None = None, source: Any = None,
              **unused: Any) -> None:
        from toklip.vlm.data import open_conversations

        o = self.options
        extra = sorted(k for k, v in unused.items() if v is not None)
        if extra:
            raise ConfigError(f"the vlm task does not take {', '.join(extra)}")
        m = cfg.model
        set_fields = [k for k in ("preset", "vq", "encoder", "projector", "attention", "attn_backend", "image_size",
                                  "init") if getattr(m, k) is not None]
        if set_fields:
            raise ConfigError(f"the vlm task builds its model from the task section; model.{set_fields[0]} does not "
                              "apply (use task.tokenizer, task.llm, task.projector, task.init)")
        # the data first: a wrong data.path fails at once, not after loading a 7B LLM
        if source is None:
            source = open_conversations(cfg.data.path, o["images"])
        self.data = source
        vlm = model if model is not None else self._build()
        vlm.config.template = o["template"]
        if o["lora"] is not None and not vlm.config.lora:
            vlm.apply_lora(o["lora"])
        vlm.set_stage(o["stage"])
        if m.grad_checkpointing:
            vlm.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        vlm.to(info.device).train()
        self.model = vlm
        self.module = VLMForward(vlm)
        self.source = source.source

    def _build(self) -> Any:
        from toklip.vlm.model import build_vlm
        from toklip.vlm.saving import load_vlm

        o = self.options
        if o["init"] is not None:
            return load_vlm(o["init"])
        return build_vlm(tokenizer=o["tokenizer"], llm=o["llm"], projector=o["projector"],
                         projector_kwargs=o["projector_kwargs"], feature_layer=o["feature_layer"],
                         features=o["features"], pretrained=o["pretrained"], template=o["template"])

    def stream(self, cfg: Any, info: Any) -> Any:
        from toklip.vlm.data import vlm_stream

        v = self.model
        return vlm_stream(
            self.data, tokenizer=v.tokenizer, num_image_tokens=v.num_image_tokens, image_token=v.config.image_token,
            image_token_id=v.image_token_id, template=v.config.template, image_size=v.image_size,
            resize_mode=v.toklip.config.resize_mode, batch_size=cfg.data.batch_size,
            max_length=self.options["max_length"], rank=info.rank, world=info.world_size, workers=cfg.data.workers,
            seed=cfg.train.seed, shuffle=cfg.data.shuffle, max_pixels=cfg.data.max_pixels,
        )

    def losses(self, runner: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
        args = [batch[k].to(device, non_blocking=True) for k in ("input_ids", "attention_mask", "labels", "images")]
        return {"lm_loss": runner(*args)}

    def after_step(self) -> None:
        pass

    def log_values(self) -> dict[str, float]:
        return {}

    def save(self, directory: Path, state: dict[str, Tensor]) -> None:
        self.model.save_pretrained(directory, state=state, full_state=FULL_STATE_CHECKPOINTS)

    def describe(self) -> str:
        o = self.options
        what = "projector" if o["stage"] == 1 else ("projector + LoRA" if o["lora"] else "projector + LLM")
        return f"{self.model.describe()}, stage {o['stage']} ({what})"
