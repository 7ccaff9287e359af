"""Tiny language models for tests and the embedded Table 1: a word-level tokenizer trained locally with
``tokenizers`` and a random-init transformers Llama, saved as an ordinary model folder (nothing downloaded)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")
# the words of the fallback chat template (toklip.vlm.conversation.SIMPLE_CHAT_TEMPLATE)
TEMPLATE_WORDS = "user : assistant : system :"


def train_word_tokenizer(texts: Iterable[str]) -> Any:
    """A transformers fast tokenizer over the words and punctuation of ``texts`` (plus the chat-template words),
    with ``<pad>``, ``<unk>``, ``<s>`` and ``</s>``; no chat template of its own."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1)
    tok.train_from_iterator([TEMPLATE_WORDS, *texts], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def make_tiny_llm(folder: str | Path, texts: Iterable[str], *, hidden: int = 32, layers: int = 2, heads: int = 4,
                  kv_heads: int = 2, intermediate: int = 64, max_positions: int = 512, seed: int = 0,
                  tie_embeddings: bool = True) -> Path:
    """Save a random-init LlamaForCausalLM and its word-level tokenizer to ``folder``; -> the folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_word_tokenizer(texts)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=max_positions, tie_word_embeddings=tie_embeddings,
                         pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"], eos_token_id=ids["</s>"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
