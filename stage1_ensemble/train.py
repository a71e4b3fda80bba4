"""Training one member: a binary token classifier for one class, with the HF Trainer.

Examples flow as a ``datasets.Dataset`` of documents; windows and labels are made with
``map(batched=True)``, as HF training scripts do.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from datasets import Dataset
from transformers import (
    AutoConfig,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from stage1_ensemble.config import TrainConfig
from stage1_ensemble.infer import hf_quiet, load_token_classifier, window_limit
from stage1_ensemble.windows import gold_cumsum, token_labels, tokenize_windows

logger = logging.getLogger(__name__)


def documents_dataset(texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]],
                      ) -> Dataset:
    """One row per document: its text and the (start, end) spans of the member's class."""
    return Dataset.from_dict({"text": list(texts),
                              "starts": [[s for s, _ in sp] for sp in spans],
                              "ends": [[e for _, e in sp] for sp in spans]})


def window_dataset(docs: Dataset, tokenizer, config: TrainConfig) -> Dataset:
    """Windows with binary labels (1 = overlaps a gold span) from a documents dataset."""

    def make_windows(batch: dict[str, list]) -> dict[str, list]:
        win = tokenize_windows(tokenizer, batch["text"], max_length=config.max_length,
                               stride=config.stride)
        cums = [gold_cumsum(len(t), list(zip(s, e)))
                for t, s, e in zip(batch["text"], batch["starts"], batch["ends"])]
        rows = [win.row(i) for i in range(len(win))]
        return {"input_ids": [ids for ids, _ in rows],
                "attention_mask": [[1] * len(ids) for ids, _ in rows],
                "labels": [token_labels(off, cums[d])
                           for (_, off), d in zip(rows, win.doc_index.tolist())]}

    return docs.map(make_windows, batched=True, remove_columns=docs.column_names)


# The config keys of the two dropout settings, by architecture family (BERT, RoBERTa,
# XLM-R, ELECTRA, DeBERTa use the first pair).
_DROPOUT_KEYS = (("attention_probs_dropout_prob", "hidden_dropout_prob"),
                 ("attention_dropout", "hidden_dropout"))


def dropout_overrides(model_config, config: TrainConfig) -> dict[str, float]:
    """The encoder config keys that set ``config``'s dropout (empty when it keeps the
    checkpoint's own); an architecture without those keys is refused, not ignored."""
    wanted = (config.attention_dropout, config.hidden_dropout)
    if wanted == (None, None):
        return {}
    for keys in _DROPOUT_KEYS:
        if all(hasattr(model_config, k) for k in keys):
            return {k: v for k, v in zip(keys, wanted) if v is not None}
    raise ValueError(f"{model_config.model_type} encoders have no dropout settings this "
                     "project knows; leave attention_dropout and hidden_dropout unset")


def load_encoder(encoder: str | Path, config: TrainConfig | None = None):
    """A fresh binary token classifier and its fast tokenizer from an encoder checkpoint.

    The new classification head is drawn from ``config.seed`` (the caller's random state is
    left as it was), so that a member depends on its data, encoder and config only, not on
    what the process did before: the Trainer seeds itself only after the model exists."""
    config = config or TrainConfig()
    tokenizer = AutoTokenizer.from_pretrained(str(encoder))
    overrides = dropout_overrides(AutoConfig.from_pretrained(str(encoder)), config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        # fp32 master weights whatever the checkpoint's dtype; bf16 comes from autocast
        model = load_token_classifier(
            encoder, new_head=True, dtype=torch.float32, num_labels=2,
            id2label={0: "O", 1: "ENTITY"}, label2id={"O": 0, "ENTITY": 1}, **overrides)
    limit = window_limit(model)
    if limit is not None and config.max_length > limit:
        raise ValueError(f"{encoder}: windows of max_length {config.max_length} tokens do not "
                         f"fit its {limit} positions; lower max_length in the training config")
    if config.freeze_embeddings:  # no gradient, no optimizer state for the word table
        model.get_input_embeddings().requires_grad_(False)
    return model, tokenizer


class LogToLogger(TrainerCallback):
    """The Trainer's loss and metrics, to this module's logger (stderr), not stdout."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in (logs or {}).items())
        logger.info("step %d/%d: %s", state.global_step, state.max_steps, shown)


def train_member(texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]], *,
                 encoder: str | Path, out_dir: Path, config: TrainConfig | None = None,
                 model=None, tokenizer=None, show_progress: bool = False) -> Path:
    """Fine-tune one member and save model and tokenizer under ``out_dir/model``."""
    config = config or TrainConfig()
    if model is None or tokenizer is None:
        model, tokenizer = load_encoder(encoder, config)
    windows = window_dataset(documents_dataset(texts, spans), tokenizer, config)
    if len(windows) == 0:
        raise ValueError("no training windows: the training documents are empty")
    bf16 = torch.cuda.is_available() if config.bf16 is None else config.bf16
    args = TrainingArguments(
        output_dir=str(out_dir / "checkpoints"), learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps, max_steps=config.max_steps,
        lr_scheduler_type="linear", weight_decay=config.weight_decay,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, bf16=bf16,
        seed=config.seed, save_strategy="no", report_to=[], logging_steps=config.logging_steps,
        disable_tqdm=not show_progress, dataloader_num_workers=0, use_cpu=not torch.cuda.is_available())
    trainer = Trainer(model=model, args=args, train_dataset=windows,
                      data_collator=DataCollatorForTokenClassification(tokenizer),
                      callbacks=[LogToLogger()])
    trainer.remove_callback(PrinterCallback)  # it prints the metrics dicts on stdout
    trainer.train()
    final = out_dir / "model"
    with hf_quiet():
        trainer.save_model(str(final))
    tokenizer.save_pretrained(str(final))
    return final
