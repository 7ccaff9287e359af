"""Comprehension: a language model reading TokLIP tokens, LLaVA-style (paper section 4.3, Tables 1 and 3).

``build_vlm(tokenizer=..., llm=...)`` composes a frozen TokLIP, a ``vlm_projector`` and any transformers causal
LM; ``load_vlm(folder)`` rebuilds a saved one; the ``vlm`` training task (``toklip train``) runs LLaVA-1.5's two
stages. ``import toklip.vlm`` is cheap (no torch): the names below load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from toklip.core.lazy import lazy_getattr

_LAZY = {
    "VLM": "toklip.vlm.model:VLM",
    "VLMConfig": "toklip.vlm.config:VLMConfig",
    "build_vlm": "toklip.vlm.model:build_vlm",
    "load_vlm": "toklip.vlm.saving:load_vlm",
    "build_vlm_projector": "toklip.vlm.projectors:build_vlm_projector",
    "list_vlm_projectors": "toklip.vlm.projectors:list_vlm_projectors",
    "run_comprehension_ablation": "toklip.vlm.ablate:run_comprehension_ablation",
}
__all__ = ["VLM", "VLMConfig", "build_vlm", "build_vlm_projector", "list_vlm_projectors", "load_vlm",
           "run_comprehension_ablation"]

__getattr__ = lazy_getattr(__name__, _LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from toklip.vlm.ablate import run_comprehension_ablation
    from toklip.vlm.config import VLMConfig
    from toklip.vlm.model import VLM, build_vlm
    from toklip.vlm.projectors import build_vlm_projector, list_vlm_projectors
    from toklip.vlm.saving import load_vlm
