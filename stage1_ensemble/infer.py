"""Running one member over many texts: windows batched across documents, sorted by length."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from stage1_ensemble.config import InferenceConfig
from stage1_ensemble.project import project_batch
from stage1_ensemble.windows import tokenize_windows


def pick_device(config: InferenceConfig) -> torch.device:
    if config.device:
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def use_bf16(config_bf16: bool | None, device: torch.device) -> bool:
    return device.type == "cuda" if config_bf16 is None else config_bf16


class MemberRunner:
    """A loaded token classifier that turns texts into positive-class token probabilities."""

    def __init__(self, model, tokenizer, config: InferenceConfig | None = None) -> None:
        self.config = config or InferenceConfig()
        self.device = pick_device(self.config)
        dtype = torch.bfloat16 if use_bf16(self.config.bf16, self.device) else torch.float32
        self.model = model.to(self.device, dtype=dtype).eval()
        self.tokenizer = tokenizer

    def windows(self, texts: Sequence[str]) -> dict[str, list]:
        return tokenize_windows(self.tokenizer, texts, max_length=self.config.max_length,
                                stride=self.config.stride)

    @torch.inference_mode()
    def window_probs(self, windows: dict[str, list]) -> list[np.ndarray]:
        """Positive-class probability of every token of every window (input order)."""
        ids = windows["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
        out: list[np.ndarray | None] = [None] * len(ids)
        pad = self.tokenizer.pad_token_id or 0
        for b in range(0, len(order), self.config.batch_size):
            batch = order[b : b + self.config.batch_size]
            width = len(ids[batch[0]])
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            logits = self.model(input_ids=input_ids.to(self.device),
                                attention_mask=mask.to(self.device)).logits
            probs = torch.softmax(logits.float(), dim=-1)[..., 1].cpu().numpy()
            for row, i in enumerate(batch):
                out[i] = probs[row, : len(ids[i])]
        return out  # type: ignore[return-value]

    def char_probs(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Character probabilities for each text (float32, one per character)."""
        windows = self.windows(texts)
        probs = self.window_probs(windows)
        return project_batch(texts, list(zip(windows["doc_index"], windows["offset_mapping"],
                                             probs)))
