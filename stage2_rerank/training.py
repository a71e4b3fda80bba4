"""Training the judge: the stage-2 LLM learns the task from labelled candidates.

The prompt is the inference prompt: the same ``PromptBuilder`` renders both, so a training
example's input ids are the ids the scorer sends. The loss is binary cross-entropy between
a label in [0, 1] (a candidate's best overlap with gold) and sigmoid(logit(yes) - logit(no))
at the answer position; after training, p = P(yes) / (P(yes) + P(no)) estimates the label.
Only the yes and no rows of the output layer are used.

Candidates whose prompts share a prefix (one document window and class) are trained
together: the prefix runs once, its keys and values are repeated for each candidate's
suffix, and the gradient flows back through both. With causal attention that is the loss of
the whole prompts, for a fraction of the tokens.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from prompts import DEFAULT_TEMPLATE
from stage2_rerank.backends.hf import answer_logits
from stage2_rerank.prompting import PromptIds

logger = logging.getLogger(__name__)


class JudgeConfig(BaseModel):
    """Every setting of ``pipeline train-judge``; ``judge.json`` records it."""

    model_config = ConfigDict(extra="forbid")

    # the prompt (the judge answers to the prompt it learnt on; run, tune and ablate then
    # use these for it unless told otherwise)
    template: str = DEFAULT_TEMPLATE
    max_context_tokens: int = Field(1024, ge=16)
    use_chat_template: bool | None = None  # None: where the tokenizer has one
    # the data: candidates at the bottom of tune's stage-1 grid, so that the judge sees
    # what it will be asked at every stage-1 threshold tune tries
    stage1_threshold: float = Field(0.3, gt=0, lt=1)
    label: Literal["overlap", "exact"] = "overlap"
    # only the uncertain candidates: those whose stage-1 score is below this (routing asks
    # the judge about no others); None: every candidate
    max_stage1_score: float | None = Field(None, gt=0, le=1)
    validation_share: int = Field(5, ge=0)  # 1/N of the document groups held out; 0: none
    # the method: LoRA adapters (peft) by default, else every weight
    lora: bool = True
    lora_rank: int = Field(8, ge=1, le=512)
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_targets: list[str] | Literal["all-linear"] = "all-linear"
    # adapters in the last N decoder layers only (None: all). The layers below then need
    # no backward pass at all: on a CPU the cheapest way to train.
    lora_layers: int | None = Field(None, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    warmup_steps: int = Field(10, ge=0)
    max_steps: int = Field(200, ge=1)
    groups_per_step: int = Field(4, ge=1)  # prompt prefixes (with their candidates) a step
    max_group: int = Field(16, ge=1)  # candidates of one prefix in one forward pass
    weight_decay: float = Field(0.0, ge=0)
    bf16: bool | None = None  # None: bf16 where CUDA is available
    seed: int = 42
    save_steps: int = Field(50, ge=1)  # a checkpoint to resume from, every N steps
    logging_steps: int = Field(10, ge=1)


def judge_loss(diff: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of sigmoid(``diff``) = sigmoid(logit yes - logit no)
    against ``labels`` in [0, 1]."""
    return torch.nn.functional.binary_cross_entropy_with_logits(diff.float(), labels.float())


@dataclass(frozen=True)
class Example:
    prompt: PromptIds
    label: float


def prefix_groups(examples: Sequence[Example], max_group: int) -> list[dict]:
    """Rows for training: the examples that share a prompt prefix, ``max_group`` at most
    in a row, in first-seen order."""
    by_prefix: dict[tuple[int, ...], list[Example]] = {}
    for ex in examples:
        by_prefix.setdefault(ex.prompt.prefix, []).append(ex)
    rows = []
    for prefix, group in by_prefix.items():
        for lo in range(0, len(group), max_group):
            part = group[lo : lo + max_group]
            rows.append({"prefix": list(prefix), "suffixes": [list(e.prompt.suffix) for e in part],
                         "labels": [e.label for e in part]})
    return rows


def group_diffs(model, prefix: Sequence[int], suffixes: Sequence[Sequence[int]], yes_id: int,
                no_id: int) -> torch.Tensor:
    """logit(yes) - logit(no) of each suffix after ``prefix``, with gradients."""
    base, head = model.get_decoder(), model.get_output_embeddings()
    device = head.weight.device
    cache = base(input_ids=torch.tensor([list(prefix)], device=device),
                 use_cache=True).past_key_values
    logits = answer_logits(base, head, cache, len(prefix), suffixes, yes_id, no_id)
    return logits[:, 0] - logits[:, 1]


def check_causal_lm(base: str | Path) -> None:
    """Refuse a base model that is not a causal LM, before anything is computed."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(base))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"base model {base}: cannot be loaded ({first})") from None
    kinds = list(getattr(config, "architectures", None) or [])
    if getattr(config, "is_encoder_decoder", False) or not any(
            k.endswith(("ForCausalLM", "LMHeadModel")) for k in kinds):
        raise ValueError(f"base model {base}: not a causal language model (its config names "
                         f"{', '.join(kinds) or 'no architecture'}); the judge is an "
                         "instruction LLM that answers yes or no")


def load_base(base: str | Path, config: JudgeConfig):
    """The base LLM in fp32 (bf16 comes from autocast), with LoRA adapters unless full
    fine-tuning was asked for."""
    from transformers import AutoModelForCausalLM

    check_causal_lm(base)
    with torch.random.fork_rng(devices=[]):  # adapters drawn from the config's seed
        torch.manual_seed(config.seed)
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        if not config.lora:
            return model
        from peft import LoraConfig, get_peft_model

        n_layers = model.config.num_hidden_layers
        layers = (list(range(max(0, n_layers - config.lora_layers), n_layers))
                  if config.lora_layers else None)
        targets = config.lora_targets
        if layers is not None and targets == "all-linear":  # peft wants names with layers
            targets = linear_names(model)
        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                          lora_dropout=config.lora_dropout, target_modules=targets,
                          layers_to_transform=layers, bias="none", task_type="CAUSAL_LM")
        return get_peft_model(model, lora)


def linear_names(model) -> list[str]:
    """The names of the linear layers inside the decoder's layers (what peft's
    "all-linear" means: every one but the output layer)."""
    names = {name.rpartition(".")[2] for name, module in model.get_decoder().named_modules()
             if isinstance(module, torch.nn.Linear)}
    return sorted(names)


def _collate(rows: list[dict]) -> dict:
    return {"groups": rows}


def _judge_trainer_class():
    from transformers import Trainer

    class JudgeTrainer(Trainer):
        """A Trainer whose batches are groups of candidates sharing a prompt prefix."""

        yes_id: int
        no_id: int

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            diffs, labels = [], []
            for g in inputs["groups"]:
                diffs.append(group_diffs(model, g["prefix"], g["suffixes"], self.yes_id,
                                         self.no_id))
                labels += g["labels"]
            diff = torch.cat(diffs)
            loss = judge_loss(diff, torch.tensor(labels, device=diff.device))
            return (loss, {"diff": diff}) if return_outputs else loss

    return JudgeTrainer


def last_checkpoint(folder: Path) -> Path | None:
    """The newest whole checkpoint under ``folder``. The Trainer writes a checkpoint's
    ``trainer_state.json`` last: one without a readable one was cut short by a crash."""
    import json

    def step(path: Path) -> int:
        tail = path.name.rpartition("-")[2]
        return int(tail) if tail.isdigit() else -1

    for path in sorted(Path(folder).glob("checkpoint-*"), key=step, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning("%s is incomplete (the training stopped while writing it); "
                           "resuming from an earlier one", path)
            continue
        return path
    return None


def train_judge_model(model, rows: Sequence[dict], *, yes_id: int, no_id: int,
                      config: JudgeConfig, work_dir: Path,
                      on_log: Callable[[dict], None] | None = None):
    """Train ``model`` (from ``load_base``) on prefix-group rows; resumes from the last
    checkpoint under ``work_dir`` if there is one. Returns the trained model."""
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback, TrainingArguments

    if not rows:
        raise ValueError("no training candidates: the judge has nothing to learn from")
    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(work_dir), learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps, max_steps=config.max_steps,
        lr_scheduler_type="linear", weight_decay=config.weight_decay,
        per_device_train_batch_size=config.groups_per_step,
        bf16=cuda if config.bf16 is None else config.bf16, seed=config.seed,
        save_strategy="steps", save_steps=config.save_steps, save_total_limit=1,
        logging_steps=config.logging_steps, report_to=[], disable_tqdm=True,
        remove_unused_columns=False, dataloader_num_workers=0, use_cpu=not cuda)
    callbacks = []
    if on_log is not None:
        class Relay(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                on_log({"step": state.global_step, "max_steps": state.max_steps, **(logs or {})})

        callbacks.append(Relay())
    trainer = _judge_trainer_class()(model=model, args=args, train_dataset=Dataset.from_list(
        list(rows)), data_collator=_collate, callbacks=callbacks)
    trainer.yes_id, trainer.no_id = yes_id, no_id
    trainer.remove_callback(PrinterCallback)  # its metrics dicts would go to stdout
    resume = last_checkpoint(work_dir)
    if resume is not None:
        logger.info("resuming the judge's training from %s", resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return trainer.model


def save_judge(model, tokenizer, out: Path, *, dtype: torch.dtype | None = None) -> dict | None:
    """The judge as a plain model folder under ``out`` (merged weights as safetensors, the
    tokenizer with its chat template) that every backend serves, and, for LoRA, the adapter
    under ``out/adapter``. Returns {"adapter", "rank"} for LoRA, else None."""
    out = Path(out)
    lora = None
    if hasattr(model, "merge_and_unload"):  # a peft model
        model.save_pretrained(str(out / "adapter"))
        rank = int(next(iter(model.peft_config.values())).r)
        lora = {"adapter": "adapter", "rank": rank}
        model = model.merge_and_unload()
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return lora


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """The area under the ROC curve (ties count half); None without both kinds."""
    import numpy as np

    s = np.asarray(scores, dtype=float)
    y = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    mean_rank = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def brier(scores: Sequence[float], labels: Sequence[float]) -> float:
    return float(sum((p - y) ** 2 for p, y in zip(scores, labels)) / max(1, len(labels)))


def finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, 4)
