"""The training configuration: a YAML or JSON file plus ``key=value`` overrides, validated before anything runs.

Sections: ``model`` (what to build and which parts train), ``data``, ``optim``, ``loss``, ``train`` (length,
precision, checkpoints) and ``dist``. Unknown keys are errors with a did-you-mean, so a typo never silently
falls back to a default. ``TrainConfig.to_dict()`` is what every run writes as its resolved config.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toklip.core.errors import ConfigError, close_matches
from toklip.train.losses import LossConfig

PRECISIONS = ("fp32", "bf16", "fp16")
STRATEGIES = ("auto", "none", "ddp", "fsdp")
DATA_TYPES = ("auto", "webdataset", "csv", "folder")


@dataclass
class ModelConfig:
    """``preset`` is a preset name or config.json; ``vq``/``encoder``/``projector``/``attention``/... are passed to
    ``toklip.build`` (a component with ``pretrained`` loads its weights: the LlamaGen VQ and the teacher's
    open_clip state dict). ``init`` starts from a TokLIP checkpoint or ``save_pretrained`` folder instead."""

    preset: str | None = None
    vq: Any = None
    encoder: Any = None
    projector: Any = None
    attention: str | None = None
    attn_backend: str | None = None
    image_size: int | None = None
    init: str | None = None
    lock_text: bool = True
    grad_checkpointing: bool = False
    compile: bool = False


@dataclass
class DataConfig:
    """``path``: WebDataset shards (a brace pattern, a list, a directory of .tar, any URL or ``pipe:`` that
    WebDataset opens), a CSV/TSV of (image path, caption), or an image folder with sidecar caption files."""

    path: Any = None
    type: str = "auto"
    batch_size: int = 16  # per process
    workers: int = 2
    num_samples: int | None = None  # samples per epoch (WebDataset without size files)
    shuffle: bool = True
    shuffle_buffer: int = 1000  # WebDataset in-worker shuffle buffer
    image_key: str | None = None  # CSV column of image paths (default: filepath/image/path)
    caption_key: str | None = None  # CSV column of captions (default: title/caption/text)
    separator: str | None = None  # CSV separator (default: tab for .tsv, comma otherwise)
    max_pixels: int | None = None  # decompression-bomb limit (default: toklip.data.preprocess.MAX_IMAGE_PIXELS)


@dataclass
class OptimConfig:
    """Paper Table A1 / the official scripts: AdamW(0.9, 0.95), eps 1e-6, wd 0.1, linear warmup then cosine."""

    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-6
    weight_decay: float = 0.1
    warmup: int = 782
    schedule: str = "cosine"  # cosine | const
    min_lr: float = 0.0
    grad_clip: float | None = None  # max global grad norm (official: none)


@dataclass
class RunConfig:
    steps: int | None = None  # total optimizer steps (or give epochs)
    epochs: float | None = None
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + GradScaler, the official "amp")
    seed: int = 0
    out_dir: str = "runs/toklip"
    log_every: int = 10
    ckpt_every: int = 1000
    keep_last: int = 3
    save_final: bool = True
    deterministic: bool = False
    device: str = "auto"
    progress: bool = True


@dataclass
class DistConfig:
    strategy: str = "auto"  # auto: DDP when launched with several processes; fsdp: FSDP2 fully_shard
    backend: str = "auto"  # nccl on CUDA, gloo on CPU
    find_unused_parameters: bool = False


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: RunConfig = field(default_factory=RunConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    # what is trained: {"name": "toklip" | "gen" | "vlm", **that task's options} (toklip.train.task)
    task: dict[str, Any] = field(default_factory=lambda: {"name": "toklip"})

    SECTIONS = ("model", "data", "optim", "loss", "train", "dist", "task")

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"a training config must be a mapping of sections, got {type(data).__name__}")
        _check_keys(data, cls.SECTIONS, "config")
        kwargs = {}
        for f in dataclasses.fields(cls):
            section = data.get(f.name) or {}
            if not isinstance(section, Mapping):
                raise ConfigError(f"config section {f.name!r} must be a mapping, got {section!r}")
            if f.name == "task":  # free-form: the task checks its own options
                kwargs[f.name] = {"name": "toklip", **copy.deepcopy(dict(section))}
                continue
            kwargs[f.name] = _section(f.default_factory, section, f.name)  # type: ignore[arg-type,misc]
        return cls(**kwargs).validate()

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for name in self.SECTIONS:
            section = getattr(self, name)
            d = dict(section) if name == "task" else dataclasses.asdict(section)
            out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        return json.loads(json.dumps(out, default=str))

    def validate(self) -> TrainConfig:
        d, o, t = self.data, self.optim, self.train
        from toklip.train.task import task_class, task_options

        task_class(self.task.get("name")).check_options(task_options(self.task))
        for name in self.SECTIONS[:-1]:
            _check_bools(getattr(self, name), name)
        _positive_int(d.batch_size, "data.batch_size")
        _nonneg_int(d.workers, "data.workers")
        _positive_int(d.shuffle_buffer, "data.shuffle_buffer")
        if d.max_pixels is not None:
            _positive_int(d.max_pixels, "data.max_pixels")
        if d.type not in DATA_TYPES:
            raise ConfigError(f"data.type must be one of {DATA_TYPES}, got {d.type!r}")
        if d.num_samples is not None:
            _positive_int(d.num_samples, "data.num_samples")
        if t.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {PRECISIONS}, got {t.precision!r}")
        if t.steps is None and t.epochs is None:
            raise ConfigError("say how long to train: train.steps=N or train.epochs=E")
        if t.steps is not None:
            _positive_int(t.steps, "train.steps")
        if t.epochs is not None and not (_is_number(t.epochs) and 0 < t.epochs < math.inf):
            raise ConfigError(f"train.epochs must be a finite number > 0, got {t.epochs!r}")
        for name in ("log_every", "ckpt_every", "keep_last"):
            _positive_int(getattr(t, name), f"train.{name}")
        if not (isinstance(t.seed, int) and not isinstance(t.seed, bool)):
            raise ConfigError(f"train.seed must be an integer, got {t.seed!r}")
        for name in ("lr", "eps", "weight_decay", "min_lr"):
            value = getattr(o, name)
            if not (_is_number(value) and value >= 0 and math.isfinite(value)):
                raise ConfigError(f"optim.{name} must be a finite number >= 0, got {value!r}")
        if (
            not isinstance(o.betas, (list, tuple)) or len(o.betas) != 2
            or not all(_is_number(b) and 0 <= b < 1 for b in o.betas)
        ):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), e.g. [0.9, 0.95]; got {o.betas!r}")
        o.betas = (float(o.betas[0]), float(o.betas[1]))
        if o.schedule not in ("cosine", "const"):
            raise ConfigError(f"optim.schedule must be 'cosine' or 'const', got {o.schedule!r}")
        _nonneg_int(o.warmup, "optim.warmup")
        if o.grad_clip is not None and not (_is_number(o.grad_clip) and 0 < o.grad_clip < math.inf):
            raise ConfigError(f"optim.grad_clip must be a finite number > 0 or null, got {o.grad_clip!r}")
        if self.dist.strategy not in STRATEGIES:
            raise ConfigError(f"dist.strategy must be one of {STRATEGIES}, got {self.dist.strategy!r}")
        self.loss.validate()
        return self

    # ------------------------------------------------------------------ files and overrides
    @classmethod
    def load(cls, path: str | Path | Mapping[str, Any] | TrainConfig | None = None,
             overrides: Sequence[str] = ()) -> TrainConfig:
        """Read a YAML/JSON file, a mapping of sections or a config (or start from defaults), then apply
        ``section.key=value`` overrides."""
        data: dict[str, Any] = {}
        if isinstance(path, TrainConfig):
            data = path.to_dict()
        elif isinstance(path, Mapping):
            data = copy.deepcopy(dict(path))
        elif path is not None:
            data = read_config_file(path)
        for item in overrides:
            apply_override(data, item)
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        """Write the resolved config (YAML for .yaml/.yml, JSON otherwise), atomically."""
        from toklip.core.io import atomic_write_text

        path = Path(path)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        else:
            text = json.dumps(self.to_dict(), indent=2) + "\n"
        return atomic_write_text(path, text)


def read_config_file(path: str | Path) -> dict[str, Any]:
    from toklip.core.io import MAX_CONFIG_BYTES, read_json

    path = Path(path).expanduser()
    if path.suffix == ".json":
        data = read_json(path, "training config")
    else:
        if not path.is_file():
            raise ConfigError(f"training config {str(path)!r} does not exist")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"training config {path} is larger than {MAX_CONFIG_BYTES} bytes: not a config")
        try:
            data = load_yaml(path.read_text(encoding="utf-8"))
        except Exception as e:  # noqa: BLE001 - yaml raises many types (and UnicodeDecodeError)
            raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path} must hold a mapping of sections (model, data, optim, ...), got {type(data).__name__}"
        )
    return data


def _yaml_loader() -> type:
    """``yaml.SafeLoader`` that also reads ``1e-4``/``3E5`` as floats (YAML 1.2); PyYAML's YAML 1.1 resolver
    needs a dot (``1.0e-4``) and would hand ``lr: 1e-4`` over as the string '1e-4'."""
    global _LOADER
    if _LOADER is None:
        import re

        import yaml

        class Loader(yaml.SafeLoader):
            pass

        Loader.add_implicit_resolver(
            "tag:yaml.org,2002:float",
            re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
            list("-+0123456789."),
        )
        _LOADER = Loader
    return _LOADER


_LOADER: type | None = None


def load_yaml(text: str) -> Any:
    import yaml

    return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass


def parse_value(text: str) -> Any:
    """An override value: YAML scalars/lists/maps (``1e-4``, ``true``, ``[0.9, 0.95]``, ``{name: mlp}``)."""
    import yaml

    try:
        return load_yaml(text)
    except yaml.YAMLError:
        return text


def apply_override(data: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value (e.g. optim.lr=1e-4)")
    key, _, raw = item.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) < 2:
        raise ConfigError(f"override {item!r} must name a section and a key, e.g. train.steps=100")
    node = data
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node = child
    node[parts[-1]] = parse_value(raw)


def _check_keys(data: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    unknown = [k for k in data if k not in known]
    if unknown:
        hints = {k: close_matches(str(k), known, n=1) for k in unknown}
        text = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
        raise ConfigError(f"unknown key(s) in {where}: {text}; known: {', '.join(known)}")


def _section(factory: Any, data: Mapping[str, Any], name: str) -> Any:
    obj = factory()
    names = [f.name for f in dataclasses.fields(obj)]
    _check_keys(data, names, f"section {name!r}")
    types = {f.name: f.type for f in dataclasses.fields(obj)}
    for k, v in data.items():
        if types[k] in ("str", "str | None") and isinstance(v, (int, float, datetime.date)) and not isinstance(v, bool):
            v = str(v)  # YAML read `out_dir: 2024` or `separator: 1` as a number/date; the field is text
        setattr(obj, k, copy.deepcopy(v))
    return obj


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_bools(section: Any, name: str) -> None:
    for f in dataclasses.fields(section):
        if f.type == "bool" and not isinstance(getattr(section, f.name), bool):
            raise ConfigError(f"{name}.{f.name} must be true or false, got {getattr(section, f.name)!r}")


def _positive_int(v: Any, name: str) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {v!r}")


def _nonneg_int(v: Any, name: str) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ConfigError(f"{name} must be an integer >= 0, got {v!r}")
