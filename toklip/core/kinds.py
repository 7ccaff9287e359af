"""The one table of component kinds. Registries, the plugin host, hookspecs, error labels, CLI help,
conformance and contract tests all read it: adding a kind is one row here plus its protocol.

Importing this module imports nothing heavy (protocols and checks are "module:attr" strings).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    """One component kind.

    ``protocol`` and ``check`` are "module:attr" strings (the Protocol a component follows, and the
    conformance function ``check(name)`` run on its ``*-test`` variants); ``config_field`` is the
    :class:`~toklip.model.config.TokLIPConfig` field that names a component of this kind (None if none).
    ``doc`` is the hook's documentation, rendered into docs/plugins.md.
    """

    name: str
    hook: str
    label: str
    protocol: str | None
    check: str | None
    config_field: str | None
    doc: str


_CHECKS = "toklip.testing.conformance"
_PROTOCOLS = "toklip.core.protocols"

KINDS_TABLE: tuple[Kind, ...] = (
    Kind(
        "vq", "register_vq_tokenizers", "VQ tokenizer", f"{_PROTOCOLS}:VQTokenizer",
        f"{_CHECKS}:check_vq_tokenizer", "vq",
        """Register VQ tokenizers (kind ``vq``).

The factory is called with the spec's defaults merged with user keyword arguments and returns an
``nn.Module`` following :class:`toklip.core.protocols.VQTokenizer` (subclass
:class:`toklip.layers.VQTokenizerBase` for the input checks): ``encode(images) -> VQEncoding``,
``indices_to_codes(indices)``, ``decode(indices)``, ``code_table()`` (a callable returning the
``[vocab, c]`` table or None), and the attributes ``code_dim``, ``vocab_size``, ``downsample``. Frozen: toklip
never trains it. Weights arrive as resolved local paths (``pretrained=`` / ``checkpoint=``), never hub names.
Register a tiny ``<name>-test`` variant too.""",
    ),
    Kind(
        "encoder", "register_encoders", "encoder", f"{_PROTOCOLS}:SemanticEncoder",
        f"{_CHECKS}:check_encoder", "encoder",
        """Register semantic encoders (kind ``encoder``): SigLIP2, DFN, AIMv2, ...

The factory returns a :class:`toklip.core.protocols.SemanticEncoder`: an object with ``grid``,
``mean``/``std``, ``logit_init()``, ``context_length`` and ``vocab_size`` (None without a text tower), that
builds the token encoder (transformer blocks + pooling initialised from the encoder's vision tower, a
:class:`toklip.core.protocols.TokenEncoder`), the text tower, its tokenizer, and the frozen teacher image
tower used for distillation.""",
    ),
    Kind(
        "projector", "register_projectors", "projector", f"{_PROTOCOLS}:Projector",
        f"{_CHECKS}:check_projector", "projector",
        """Register projectors (kind ``projector``): code vectors / indices -> token embeddings of the encoder width.

The factory is called as ``factory(code_dim=, vocab_size=, width=, **kwargs)`` and returns a
:class:`toklip.core.protocols.Projector`: an ``nn.Module`` whose ``forward(codes, indices, code_table=None)``
returns ``[B, N, width]``.""",
    ),
    Kind(
        "attention", "register_attention_modes", "attention mode", f"{_PROTOCOLS}:AttentionMode",
        None, "attention",
        """Register attention modes (kind ``attention``): the mask semantics, e.g. ``causal``, ``bidirectional``.

The factory returns a :class:`toklip.core.protocols.AttentionMode`.""",
    ),
    Kind(
        "attn_backend", "register_attn_backends", "attention backend", f"{_PROTOCOLS}:AttentionBackend",
        f"{_CHECKS}:check_attn_backend", "attn_backend",
        """Register attention implementations (kind ``attn_backend``): ``sdpa``, ``eager``, ``triton``, ...

The factory returns a :class:`toklip.core.protocols.AttentionBackend`: a callable
``backend(q, k, v, *, causal, attn_mask=None, scale=None) -> out`` on ``[B, H, N, d]`` tensors with a
``supports(q, causal=, has_mask=) -> str | None`` method that names why it cannot run a call.""",
    ),
    Kind(
        "fusion", "register_fusions", "fusion", f"{_PROTOCOLS}:Fusion",
        f"{_CHECKS}:check_fusion", "fusion",
        """Register fusion functions (kind ``fusion``) joining low-level code embeddings and semantic features.

The factory is called as ``factory(low_dim=, high_dim=, out_dim=None, **kwargs)`` (``out_dim`` None means
``high_dim``; a generator passes its own width) and returns a
:class:`toklip.core.protocols.Fusion`: an ``nn.Module`` with ``out_dim`` and
``forward(low [B,N,low_dim], high [B,N,high_dim]) -> [B,N,out_dim]``.""",
    ),
    Kind(
        "generator", "register_generators", "generator", f"{_PROTOCOLS}:Generator",
        f"{_CHECKS}:check_generator", None,
        """Register autoregressive generators over image tokens (kind ``generator``): LlamaGen's GPT family, ...

The factory is called with the spec's defaults merged with config overrides (``vocab_size``, ``block_size``,
``num_classes``, ...) and returns a :class:`toklip.core.protocols.Generator`: an ``nn.Module`` with ``config``,
``num_tokens``, ``model_type`` (``"c2i"`` or ``"t2i"``), teacher forcing ``forward(codes, cond) -> [B, N, vocab]``
logits, ``embed_image_tokens(codes, extra=None)`` / ``start_image_stream(batch)`` (the input hook fused TokLIP
inputs replace), ``new_cache`` / ``forward_cached`` for KV-cached decoding and ``sample(cond, ...)``.
``toklip.build_generator`` wraps it with a tokenizer and a fusion. Register a tiny ``<name>-test`` too.""",
    ),
    Kind(
        "vlm_projector", "register_vlm_projectors", "VLM projector", f"{_PROTOCOLS}:VLMProjector",
        "toklip.vlm.projectors:check_vlm_projector", None,
        """Register VLM projectors (kind ``vlm_projector``): per-token image features -> a language model's width.

The factory is called as ``factory(in_dim=, out_dim=, **kwargs)`` (the feature width and the LLM's hidden size)
and returns a :class:`toklip.core.protocols.VLMProjector`: an ``nn.Module`` whose ``forward(features)`` maps
``[B, N, in_dim]`` to ``[B, N, out_dim]``. ``toklip.build_vlm(projector=NAME)`` builds it; LLaVA's ``mlp2x_gelu``
and ``linear`` are builtin. Register a tiny ``<name>-test`` variant too.""",
    ),
    Kind(
        "preset", "register_presets", "preset", None, None, None,
        """Register presets (kind ``preset``): ``register(name, path_or_dict, ...)``, a full TokLIP config.

A path points to a JSON file in the :class:`toklip.model.config.TokLIPConfig` format (the JSON Schema ships as
``toklip/presets/preset.schema.json`` and is checked on load); a ``"package:resource.json"`` string names a file
inside an installed package (list it in your pyproject's ``[tool.setuptools.package-data]``).""",
    ),
)

KIND_BY_NAME: dict[str, Kind] = {k.name: k for k in KINDS_TABLE}
KINDS: tuple[str, ...] = tuple(KIND_BY_NAME)
KIND_BY_HOOK: dict[str, Kind] = {k.hook: k for k in KINDS_TABLE}


def kind_label(kind: str) -> str:
    """A kind's name for people ("VQ tokenizer"); unknown kinds are shown as they are."""
    k = KIND_BY_NAME.get(kind)
    return k.label if k else kind
