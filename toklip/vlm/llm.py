"""The language model: any transformers causal LM from a local folder or a hub id, loaded safely.

A hub id (``"Qwen/Qwen2.5-7B-Instruct"``) resolves through huggingface_hub's cache (``snapshot_download`` of the
config, tokenizer and ``*.safetensors`` files only: never a pickle, never code). Offline with nothing cached it
is one :class:`~toklip.core.errors.WeightsNotFoundError` naming the repo and the local-folder alternative.
``trust_remote_code`` is always False: a model whose architecture needs code from its repo is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from toklip.core.errors import CheckpointError, ConfigError
from toklip.vlm.conversation import ensure_chat_template

# what a causal LM folder needs: configs, tokenizer files, chat templates and safetensors weights
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja", "tokenizer*"]


def resolve_llm(source: str | Path) -> Path:
    """A local folder as is; a hub repo id -> its snapshot folder in the HF cache (downloaded when online)."""
    from toklip.weights.hub import hub_model_folder

    return hub_model_folder(source, what="language model", option="llm", patterns=HUB_PATTERNS,
                            contents="config.json, tokenizer files, *.safetensors")


def load_llm(source: str | Path, *, dtype: torch.dtype | None = None,
             device: str | torch.device | None = None) -> tuple[Any, Any, Path]:
    """-> (causal LM in eval mode, its tokenizer with a chat template and a pad token, the local folder)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toklip.weights.hub import check_model_folder

    folder = resolve_llm(source)
    check_model_folder(folder, "model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False, use_safetensors=True,
                                                     dtype=dtype or torch.float32)
    except ValueError as e:
        raise ConfigError(f"{folder} is not a causal LM transformers can build without remote code "
                          f"(toklip never sets trust_remote_code): {str(e).splitlines()[0]}") from e
    except OSError as e:
        raise CheckpointError(f"could not read the language model in {folder}: {str(e).splitlines()[0]}") from e
    prepare_tokenizer(tokenizer)
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer, folder


def prepare_tokenizer(tokenizer: Any) -> None:
    """A pad token (the end-of-sequence token when there is none) and a chat template (the simple fallback)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError("the LLM tokenizer has neither a pad nor an end-of-sequence token; batches cannot be "
                              "padded and generation cannot stop")
        tokenizer.pad_token = tokenizer.eos_token
    ensure_chat_template(tokenizer)


def hidden_size(llm: Any) -> int:
    """The width of the LLM's input embeddings (what the projector maps to)."""
    return int(llm.get_input_embeddings().weight.shape[1])
