"""The plugin contract: one pluggy hook per component kind.

A plugin is a module listed under the entry-point group ``toklip`` that implements any of these
hooks with ``@toklip.hookimpl``. Each hook receives a ``register`` callback::

    register(name, factory, *, aliases=(), requires=(), defaults=None, pretrained=None, summary="")

``factory`` is a ``"package.module:attr"`` string (preferred: nothing is imported until the component is
built, so ``toklip list`` stays fast and a missing optional dependency cannot break discovery) or a callable.
``requires`` lists PEP 508 requirements checked through package metadata before the factory is imported.

Gotcha inherited from pluggy: a hookimpl may accept a subset of a hook's arguments, but arguments that
have default values in the hookimpl are never passed. Write ``def register_vq_tokenizers(register):``.
"""

from __future__ import annotations

import pluggy

PROJECT = "toklip"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_vq_tokenizers(register):  # type: ignore[no-untyped-def]
    """Register VQ tokenizers (kind ``vq``).

    The factory is called with the spec's defaults merged with user keyword arguments and returns an
    ``nn.Module`` following :class:`toklip.core.protocols.VQTokenizer`: ``encode(images) -> VQEncoding``,
    ``indices_to_codes(indices)``, ``decode(indices)``, ``code_table()``, and the attributes ``code_dim``,
    ``vocab_size``, ``downsample``. Frozen: toklip never trains it. Register a tiny ``<name>-test`` variant too.
    """


@hookspec
def register_encoders(register):  # type: ignore[no-untyped-def]
    """Register semantic encoders (kind ``encoder``): SigLIP2, DFN, AIMv2, ...

    The factory returns a :class:`toklip.core.protocols.SemanticEncoder`: an object that builds the token
    encoder (transformer blocks + pooling, initialised from the encoder's vision tower), the text tower and
    its tokenizer, and the frozen teacher image tower used for distillation.
    """


@hookspec
def register_projectors(register):  # type: ignore[no-untyped-def]
    """Register projectors (kind ``projector``): code vectors / indices -> token embeddings of the encoder width.

    The factory is called as ``factory(code_dim=, vocab_size=, width=, **kwargs)`` and returns an ``nn.Module``
    whose ``forward(codes, indices, code_table=None)`` returns ``[B, N, width]``.
    """


@hookspec
def register_attention_modes(register):  # type: ignore[no-untyped-def]
    """Register attention modes (kind ``attention``): the mask semantics, e.g. ``causal``, ``bidirectional``.

    The factory returns a :class:`toklip.core.protocols.AttentionMode`.
    """


@hookspec
def register_attn_backends(register):  # type: ignore[no-untyped-def]
    """Register attention implementations (kind ``attn_backend``): ``sdpa``, ``eager``, ``triton``, ...

    The factory returns a :class:`toklip.core.protocols.AttentionBackend`: a callable
    ``backend(q, k, v, *, causal, attn_mask=None, scale=None) -> out`` on ``[B, H, N, d]`` tensors with a
    ``supports(q, causal=, has_mask=) -> str | None`` method that names why it cannot run a call.
    """


@hookspec
def register_fusions(register):  # type: ignore[no-untyped-def]
    """Register fusion functions (kind ``fusion``) joining low-level code embeddings and semantic features.

    The factory is called as ``factory(low_dim=, high_dim=, out_dim=, **kwargs)`` and returns an ``nn.Module``
    with ``forward(low [B,N,low_dim], high [B,N,high_dim]) -> [B,N,out_dim]``.
    """


@hookspec
def register_presets(register):  # type: ignore[no-untyped-def]
    """Register presets (kind ``preset``): ``register(name, path_or_dict, ...)``, a full TokLIP config.

    A path points to a JSON file in the :class:`toklip.model.config.TokLIPConfig` format.
    """


@hookspec
def register_commands(cli):  # type: ignore[no-untyped-def]
    """Add subcommands to the ``toklip`` command line: ``cli`` is the root :mod:`click` group."""
