"""Tiny language models for tests and the embedded Table 1: a word-level tokenizer trained locally with
``tokenizers``, and a random-init transformers Llama (or T5 encoder, the caption encoder of t2i generators), saved
as an ordinary model folder (nothing downloaded)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")
# the words of the fallback chat template (toklip.vlm.conversation.SIMPLE_CHAT_TEMPLATE)
TEMPLATE_WORDS = "user : assistant : system :"


def train_word_tokenizer(texts: Iterable[str], *, append_eos: bool = False) -> Any:
    """A transformers fast tokenizer over the words and punctuation of ``texts`` (plus the chat-template words),
    with ``<pad>``, ``<unk>``, ``<s>`` and ``</s>``; no chat template of its own. ``append_eos``: every encoded
    text ends with ``</s>``, as T5's tokenizer does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1)
    tok.train_from_iterator([TEMPLATE_WORDS, *texts], trainer)
    if append_eos:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                           special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def make_tiny_llm(folder: str | Path, texts: Iterable[str], *, hidden: int = 32, layers: int = 2, heads: int = 4,
                  kv_heads: int = 2, intermediate: int = 64, max_positions: int = 512, seed: int = 0,
                  tie_embeddings: bool = True) -> Path:
    """Save a random-init LlamaForCausalLM and its word-level tokenizer to ``folder``; -> the folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_word_tokenizer(texts)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=max_positions, tie_word_embeddings=tie_embeddings,
                         pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"], eos_token_id=ids["</s>"])
    return save_random_model(LlamaForCausalLM, config, tokenizer, folder, seed)


def make_tiny_t5_encoder(folder: str | Path, texts: Iterable[str], *, width: int = 32, layers: int = 1,
                         heads: int = 4, ff: int = 64, seed: int = 0) -> Path:
    """Save a random-init T5EncoderModel (``width`` = its feature size, a t2i generator's caption_dim) and its
    word-level tokenizer (``</s>`` appended, right padding, as T5's) to ``folder``; -> the folder."""
    from transformers import T5Config, T5EncoderModel

    tokenizer = train_word_tokenizer(texts, append_eos=True)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=width // heads, d_ff=ff, num_layers=layers,
                      num_heads=heads, pad_token_id=ids["<pad>"], eos_token_id=ids["</s>"],
                      decoder_start_token_id=ids["<pad>"], dropout_rate=0.0)
    return save_random_model(T5EncoderModel, config, tokenizer, folder, seed)


def save_random_model(model_class: Any, config: Any, tokenizer: Any, folder: str | Path, seed: int) -> Path:
    """``model_class(config)`` initialised from ``seed`` (the global RNG left as it was), saved with safetensors
    beside ``tokenizer`` in ``folder``; -> the folder."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
