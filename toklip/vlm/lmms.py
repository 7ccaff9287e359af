"""The lmms-eval model ``toklip``: POPE, MME, GQA, SEED, MMMU... through the standard harness (lmms-eval 0.7).

lmms-eval is optional and heavy, so this module imports it only when the class is asked for. Run::

    python -m toklip.vlm.lmms --model toklip --model_args pretrained=runs/vlm-stage2 \\
        --tasks pope,mme,gqa --batch_size 1 --output_path results/

``python -m toklip.vlm.lmms`` registers the model with lmms-eval, then runs lmms-eval's own command line with
the same arguments (once toklip declares the ``lmms_eval.models`` entry point, ``python -m lmms_eval --model
toklip ...`` works as well). ``model_args``: ``pretrained`` (a VLM folder or training run, required), ``llm``
(a moved base LLM), ``device`` (auto | cpu | cuda:N), ``dtype`` (auto | bf16 | fp16 | fp32), ``batch_size``,
``max_new_tokens`` (default 128).

The request handling lives in :class:`VLMRequests`, which needs no lmms-eval: ``generate_until`` (greedy unless
the task asks for a temperature, cut at the task's ``until`` strings) and ``loglikelihood`` (the summed log
probability of the continuation after the chat-formatted context, and whether greedy decoding gives it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from toklip.core.errors import InputError

MODEL_NAME = "toklip"
CLASS_PATH = "toklip.vlm.lmms.TokLIPLMM"


def _flatten(visuals: Any) -> list[Any]:
    if visuals is None:
        return []
    if isinstance(visuals, (list, tuple)):
        return [v for item in visuals for v in _flatten(item)]
    if isinstance(visuals, (str, dict)):
        raise InputError(f"toklip's VLM reads images only; this task gives {type(visuals).__name__} visuals "
                         "(video or audio)")
    return [visuals]


def _with_placeholders(context: str, n: int, tag: str) -> str:
    """lmms-eval contexts carry no placeholders: the images go first, one placeholder each (LLaVA's habit)."""
    if n == 0 or tag in context:
        return context
    return f"{tag}\n" * n + context


def _generation_options(gen_kwargs: dict[str, Any], default_max_new_tokens: int) -> tuple[dict[str, Any], list[str]]:
    g = dict(gen_kwargs or {})
    until = g.pop("until", None) or []
    until = [until] if isinstance(until, str) else list(until)
    temperature = float(g.pop("temperature", 0) or 0)
    opts: dict[str, Any] = {"max_new_tokens": int(g.pop("max_new_tokens", default_max_new_tokens))}
    if temperature > 0:
        opts.update(do_sample=True, temperature=temperature)
        if g.get("top_p") is not None:
            opts["top_p"] = float(g["top_p"])
    else:
        opts["do_sample"] = False
    if int(g.get("num_beams", 1) or 1) > 1:
        opts["num_beams"] = int(g["num_beams"])
    return opts, until


def cut_at(text: str, until: Sequence[str]) -> str:
    """The text before the first stop string."""
    for stop in until:
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text


class VLMRequests:
    """lmms-eval requests answered by a :class:`~toklip.vlm.model.VLM`; ``docs(task, split, doc_id)`` returns a
    document (lmms-eval's ``task_dict[task][split][doc_id]``)."""

    def __init__(self, vlm: Any, docs: Callable[[str, str, int], Any], *, batch_size: int = 1,
                 max_new_tokens: int = 128) -> None:
        self.vlm, self.docs = vlm, docs
        self.batch_size, self.max_new_tokens = max(1, int(batch_size)), int(max_new_tokens)

    def _prompt(self, context: str, doc_to_visual: Callable[[Any], Any], doc: Any) -> tuple[str, list[Any]]:
        visuals = _flatten(doc_to_visual(doc)) if doc_to_visual is not None else []
        return _with_placeholders(context, len(visuals), self.vlm.config.image_token), visuals

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        """``args = (context, gen_kwargs, doc_to_visual, doc_id, task, split)`` -> the continuations, in order."""
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):  # batch only requests that share their generation options
            groups.setdefault(repr(sorted((req.args[1] or {}).items(), key=str)), []).append(i)
        for idx in groups.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                prompts, images = [], []
                for i in chunk:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    text, visuals = self._prompt(context, doc_to_visual, self.docs(task, split, doc_id))
                    prompts.append(text)
                    images.append(visuals)
                opts, until = _generation_options(requests[chunk[0]].args[1], self.max_new_tokens)
                replies = self.vlm.generate(prompts, images, **opts)
                for i, reply in zip(chunk, replies):
                    out[i] = cut_at(reply, until).strip()
        return [o if o is not None else "" for o in out]

    @torch.no_grad()
    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        """``args = (context, doc_to_target, doc_to_visual, doc_id, task, split)`` -> (log p(continuation |
        context, images), greedy) per request; the continuation is ``doc_to_target(doc)`` or the string given."""
        from toklip.vlm.conversation import encode_conversation

        vlm = self.vlm
        results = []
        for req in requests:
            context, target, doc_to_visual, doc_id, task, split = req.args
            doc = self.docs(task, split, doc_id)
            continuation = target if isinstance(target, str) else target(doc)
            text, visuals = self._prompt(context, doc_to_visual, doc)
            prompt = encode_conversation(vlm.tokenizer, [{"role": "user", "content": text}],
                                         num_image_tokens=vlm.num_image_tokens, image_token=vlm.config.image_token,
                                         template=vlm.config.template, add_generation_prompt=True)
            from toklip.vlm.model import check_placeholders

            check_placeholders(prompt.num_images, len(visuals), vlm.config.image_token, where=f"{task} doc {doc_id}")
            cont = torch.tensor(vlm.tokenizer(continuation, add_special_tokens=False)["input_ids"], dtype=torch.long)
            if cont.numel() == 0:
                results.append((0.0, True))
                continue
            ids = torch.cat([prompt.input_ids, cont])[None]
            pixels = torch.stack([vlm.to_pixels(v) for v in visuals]) if visuals else None
            logits = vlm(ids, torch.ones_like(ids), images=pixels)["logits"][0].float()
            n = len(prompt.input_ids)
            logprobs = torch.log_softmax(logits[n - 1:-1], dim=-1)  # the positions that predict the continuation
            target_ids = cont.to(logprobs.device)
            total = float(logprobs.gather(1, target_ids[:, None]).sum())
            greedy = bool((logprobs.argmax(-1) == target_ids).all())
            results.append((total, greedy))
        return results


# ---------------------------------------------------------------------------------------------- lmms-eval glue
def _wrap_loglikelihood(result: tuple[float, bool]) -> Any:
    """lmms-eval 0.7.3's evaluator passes every response through ``unwrap_generation_output``, which turns a
    ``(logprob, greedy)`` pair into its string (so multiple-choice tasks fail for every model); a
    ``GenerationResult`` carrying the pair comes through intact. Older or fixed versions get the plain pair."""
    try:
        from lmms_eval.api.instance import GenerationResult, unwrap_generation_output
    except ImportError:
        return result
    if isinstance(unwrap_generation_output((0.0, True))[0], str):
        return GenerationResult(text=result)  # type: ignore[arg-type]
    return result


def _build_class() -> type:
    try:
        from lmms_eval.api.model import lmms
        from lmms_eval.api.registry import register_model
    except ImportError as e:
        from toklip.core.errors import MissingDependencyError

        raise MissingDependencyError("the lmms-eval model class needs lmms-eval: pip install lmms-eval") from e

    @register_model(MODEL_NAME)
    class TokLIPLMM(lmms):
        """lmms-eval's view of a toklip VLM folder (``--model toklip --model_args pretrained=DIR``)."""

        is_simple = True

        def __init__(self, pretrained: str, llm: str | None = None, device: str = "auto", dtype: str = "auto",
                     batch_size: int | str = 1, max_new_tokens: int | str = 128, **unused: Any) -> None:
            super().__init__()
            import os

            from toklip.model.loading import resolve_device, resolve_dtype
            from toklip.vlm.saving import load_vlm

            if unused:
                raise InputError(f"unknown --model_args for toklip: {', '.join(sorted(unused))} (known: pretrained, "
                                 "llm, device, dtype, batch_size, max_new_tokens)")
            if device == "auto" and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
                device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            dev = resolve_device(device)
            self.vlm = load_vlm(pretrained, llm=llm, device=dev, dtype=resolve_dtype(dtype, dev))
            self._device = dev
            self.requests = VLMRequests(self.vlm, self._doc, batch_size=int(batch_size),
                                        max_new_tokens=int(max_new_tokens))

        @property
        def device(self) -> torch.device:
            return self._device

        def _doc(self, task: str, split: str, doc_id: int) -> Any:
            return self.task_dict[task][split][doc_id]

        def generate_until(self, requests: list[Any]) -> list[str]:
            return self.requests.generate_until(requests)

        def loglikelihood(self, requests: list[Any]) -> list[Any]:
            return [_wrap_loglikelihood(r) for r in self.requests.loglikelihood(requests)]

        def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
            raise NotImplementedError("toklip's lmms-eval model answers single-round tasks")

    return TokLIPLMM


_CLASS: type | None = None


def __getattr__(name: str) -> Any:
    """``TokLIPLMM`` is built (and registered with lmms-eval) on first access, so importing this module needs no
    lmms-eval."""
    global _CLASS
    if name == "TokLIPLMM":
        if _CLASS is None:
            _CLASS = _build_class()
        return _CLASS
    raise AttributeError(name)


def manifest() -> Any:
    """The ``lmms_eval.models`` entry point's payload: ``toklip = "toklip.vlm.lmms:manifest"``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=CLASS_PATH)


def register() -> None:
    """Make ``--model toklip`` known to lmms-eval in this process."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    MODEL_REGISTRY_V2.register_manifest(manifest(), overwrite=True)


def main() -> None:
    """``python -m toklip.vlm.lmms ARGS``: lmms-eval's command line with the toklip model registered."""
    try:
        register()
        from lmms_eval.cli.dispatch import main as lmms_main
    except ImportError as e:
        raise SystemExit(f"lmms-eval is not installed: pip install lmms-eval ({e})") from e
    lmms_main()


if __name__ == "__main__":
    main()
