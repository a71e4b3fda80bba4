"""Running one member over many texts: windows batched across documents, sorted by length."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from stage1_ensemble.config import InferenceConfig
from stage1_ensemble.project import project_batch
from stage1_ensemble.windows import Windows, tokenize_windows

logger = logging.getLogger(__name__)


def pick_device(config: InferenceConfig) -> torch.device:
    if config.device:
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def use_bf16(config_bf16: bool | None, device: torch.device) -> bool:
    return device.type == "cuda" if config_bf16 is None else config_bf16


def padded_width(longest: int, multiple: int, limit: int) -> int:
    """A batch's width: its longest window rounded up to ``multiple``, at most ``limit``."""
    return min(-(-longest // multiple) * multiple, limit)


@contextmanager
def hf_quiet() -> Iterator[None]:
    """transformers draws a progress bar and prints a load report for every model it loads
    (and a bar for every one it saves): with 18 members, 18 of each between the lines of the
    command's own progress. Bars and its messages below errors are off inside, then as they
    were; ``load_token_classifier`` checks itself what the report would have said."""
    from transformers.utils import logging as hf_logging

    shown, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if shown:
            hf_logging.enable_progress_bar()


def load_token_classifier(folder: str | Path, *, new_head: bool = False, **kwargs):
    """``AutoModelForTokenClassification.from_pretrained(folder, **kwargs)``, refusing a
    checkpoint that lacks weights the model needs (transformers would draw them at random
    and only say so in a report): any, for a trained member; any of the encoder's, with
    ``new_head`` (a member about to be trained, whose classification head is new)."""
    from transformers import AutoModelForTokenClassification

    with hf_quiet():
        model, info = AutoModelForTokenClassification.from_pretrained(
            str(folder), output_loading_info=True, **kwargs)
    missing = list(info["missing_keys"])
    if new_head:
        missing = [k for k in missing if k.startswith(f"{model.base_model_prefix}.")]
    if missing:
        raise ValueError(f"{folder}: {len(missing)} weights of the model are not in its "
                         f"checkpoint (e.g. {sorted(missing)[0]}); they would be random")
    return model


def labels_problem(folder: Path) -> str | None:
    """Why the model in ``folder`` cannot be a member (it is no binary classifier), or None.
    Reads its config only."""
    from transformers import AutoConfig

    n = AutoConfig.from_pretrained(str(folder)).num_labels
    return None if n == 2 else f"a member must be a binary token classifier, {folder} has {n} labels"


def window_limit(model) -> int | None:
    """The most tokens a window may hold for ``model``: its table of absolute positions
    (RoBERTa-style embeddings reserve the first ``padding_idx + 1`` of it); None where
    positions are not absolute."""
    config = model.config
    n = getattr(config, "max_position_embeddings", None)
    if n is None or getattr(config, "position_embedding_type", "absolute") != "absolute" \
            or getattr(config, "position_biased_input", True) is False:
        return None
    padding = getattr(getattr(model.base_model, "embeddings", None), "padding_idx", None)
    return n - (padding + 1) if isinstance(padding, int) else n


class MemberRunner:
    """A loaded token classifier that turns texts into positive-class token probabilities."""

    @classmethod
    def load(cls, folder: Path, config: InferenceConfig | None = None,
             positive: tuple[int, ...] | None = None) -> MemberRunner:
        """The member saved in ``folder`` (model and tokenizer), with SDPA attention. A
        binary member's probability is its label 1's; a token classifier of more labels
        gives the summed probability of its ``positive`` labels (the B- and I- of a class,
        say)."""
        from transformers import AutoTokenizer

        if positive is None:
            problem = labels_problem(folder)
            if problem:
                raise ValueError(problem)
        model = load_token_classifier(folder, attn_implementation="sdpa")
        return cls(model, AutoTokenizer.from_pretrained(str(folder)), config, positive)

    def __init__(self, model, tokenizer, config: InferenceConfig | None = None,
                 positive: tuple[int, ...] | None = None) -> None:
        self.positive = list(positive) if positive is not None else None
        self.config = config or InferenceConfig()
        self.device = pick_device(self.config)
        dtype = torch.bfloat16 if use_bf16(self.config.bf16, self.device) else torch.float32
        self.model = model.to(self.device, dtype=dtype).eval()
        self.forward = torch.compile(self.model, dynamic=True) if self.config.compile \
            else self.model
        self.tokenizer = tokenizer
        limit = window_limit(model)
        self.max_length = self.config.max_length
        if limit is not None and self.max_length > limit:
            logger.warning("max_length %d is more than the model's %d positions; its windows "
                           "hold %d tokens", self.max_length, limit, limit)
            self.max_length = limit
            if self.config.stride > limit // 2:
                raise ValueError(f"stride {self.config.stride} is more than half of the "
                                 f"{limit} tokens the model's windows can hold")

    @cached_property
    def tokenizer_key(self) -> str:
        """Equal for runners whose windows are the same (the fast tokenizer's whole
        definition: normaliser, pre-tokeniser, vocabulary, special tokens; and the window
        size)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:  # not a fast tokenizer: shares nothing (``windows`` refuses it)
            return f"runner-{id(self)}"
        definition = (f"{type(self.tokenizer).__name__} {self.max_length} {self.config.stride} "
                      + backend.to_str())
        return hashlib.sha256(definition.encode()).hexdigest()

    def windows(self, texts: Sequence[str]) -> Windows:
        return tokenize_windows(self.tokenizer, texts, max_length=self.max_length,
                                stride=self.config.stride)

    @torch.inference_mode()
    def window_probs(self, windows: Windows) -> np.ndarray:
        """Positive-class probability of every token of every window, (W, L) like the
        windows' input_ids (0 on padding, whose offsets are zero-width).

        Windows are sorted by length so that batches carry little padding; results stay on
        the device until every batch has been queued, then come back in one transfer each,
        so the accelerator never waits for the host between batches.
        """
        lengths = windows.lengths
        order = np.argsort(-lengths, kind="stable")
        pending = []
        for b in range(0, len(order), self.config.batch_size):
            batch = order[b : b + self.config.batch_size]
            width = padded_width(int(lengths[batch[0]]), self.config.width_multiple,
                                 windows.input_ids.shape[1])
            input_ids = torch.from_numpy(windows.input_ids[batch, :width])
            # A batch without padding needs no mask, which lets SDPA pick its fastest kernel.
            mask = None
            if lengths[batch[-1]] < width:
                mask = torch.from_numpy(
                    (np.arange(width)[None, :] < lengths[batch][:, None]).astype(np.int64)
                ).to(self.device, non_blocking=True)
            logits = self.forward(input_ids=input_ids.to(self.device, non_blocking=True),
                                attention_mask=mask).logits
            probs = torch.softmax(logits.float(), dim=-1)
            probs = probs[..., 1] if self.positive is None else \
                probs[..., self.positive].sum(dim=-1)
            pending.append((batch, width, probs))
        out = np.zeros(windows.input_ids.shape, dtype=np.float32)
        for batch, width, probs in pending:
            out[batch, :width] = probs.cpu().numpy()
        out[np.arange(out.shape[1])[None, :] >= lengths[:, None]] = 0.0  # padding: nothing
        return out

    def char_probs(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Character probabilities for each text (float32, one per character)."""
        windows = self.windows(texts)
        return project_batch(texts, windows.doc_index, windows.offsets,
                             self.window_probs(windows))
