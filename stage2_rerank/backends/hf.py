"""transformers backend (CPU fallback, or GPU): each distinct prefix is encoded once and its
KV cache reused for all the candidates that share it; only the yes and no rows of the LM
head are applied to the last hidden state."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from stage2_rerank.prompting import PromptIds


def head_logits(head, hidden: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    """(n, 2) logits of the yes and no tokens: only those two rows of the LM head."""
    rows = head.weight[[yes_id, no_id]]
    logits = hidden.float() @ rows.float().T
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias[[yes_id, no_id]].float()
    return logits


def answer_logits(base, head, cache, prefix_len: int, suffixes: Sequence[Sequence[int]],
                  yes_id: int, no_id: int) -> torch.Tensor:
    """(n, 2) yes/no logits of several suffixes after one prefix, in one forward pass.

    ``cache`` holds the prefix's keys and values (batch 1); it is repeated for the suffixes
    in place, so a caller that needs it again passes a copy. The suffixes are right-padded
    and each answer is read at its last real token. Under autograd the gradient flows back
    through the cache into the prefix: training the judge uses this too, and a prefix then
    runs once for all its candidates (causal attention: the same loss as whole prompts).
    """
    device = head.weight.device
    n, width = len(suffixes), max(len(s) for s in suffixes)
    ids = torch.zeros((n, width), dtype=torch.long, device=device)
    mask = torch.zeros((n, prefix_len + width), dtype=torch.long, device=device)
    mask[:, :prefix_len] = 1
    for row, s in enumerate(suffixes):
        ids[row, : len(s)] = torch.tensor(s)
        mask[row, prefix_len : prefix_len + len(s)] = 1
    cache.batch_repeat_interleave(n)
    positions = torch.arange(prefix_len, prefix_len + width, device=device)
    hidden = base(input_ids=ids, attention_mask=mask, past_key_values=cache,
                  position_ids=positions.expand(n, -1), use_cache=True).last_hidden_state
    last = torch.tensor([len(s) - 1 for s in suffixes], device=device)
    return head_logits(head, hidden[torch.arange(n, device=device), last], yes_id, no_id)


class HFBackend:
    name = "hf"

    def __init__(self, model, *, device: str | None = None,
                 dtype: str = "auto", reuse_prefix: bool = True, suffix_batch: int = 16) -> None:
        """``model``: a model folder, or a causal LM already in memory (used where it is,
        as it is: the judge's validation scores the model it has just trained)."""
        if isinstance(model, (str, Path)):
            from transformers import AutoModelForCausalLM

            path = Path(model)
            if not path.exists():
                raise FileNotFoundError(f"model path {path} does not exist")
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            torch_dtype = {"auto": torch.bfloat16 if self.device.type == "cuda" else torch.float32,
                           "float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
            self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
            self.model.to(self.device)
        else:
            self.model = model
            self.device = next(model.parameters()).device
        self.model.eval()
        self.base = self.model.get_decoder()
        self.head = self.model.get_output_embeddings()
        self.reuse_prefix = reuse_prefix
        # the answer is read at the prompt's last position: no position past the trained ones
        self.max_prompt_tokens: int | None = getattr(self.model.config,
                                                     "max_position_embeddings", None)
        self.suffix_batch = suffix_batch

    @torch.inference_mode()
    def score_prompts(self, prompts: Sequence[PromptIds], yes_id: int, no_id: int,
                      ) -> list[float]:
        out: list[float | None] = [None] * len(prompts)
        if not self.reuse_prefix:
            for i, p in enumerate(prompts):
                ids = torch.tensor([p.ids], device=self.device)
                hidden = self.base(input_ids=ids).last_hidden_state[0, -1]
                out[i] = self._prob(hidden, yes_id, no_id)
            return out  # type: ignore[return-value]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p.prefix, []).append(i)
        for prefix, members in groups.items():
            cache = self.base(input_ids=torch.tensor([prefix], device=self.device),
                              use_cache=True).past_key_values
            for b in range(0, len(members), self.suffix_batch):
                batch = members[b : b + self.suffix_batch]
                for i, p in zip(batch, self._score_suffixes(cache, len(prefix),
                                                             [prompts[i].suffix for i in batch],
                                                             yes_id, no_id)):
                    out[i] = p
        return out  # type: ignore[return-value]

    def _score_suffixes(self, cache, prefix_len: int, suffixes: list[tuple[int, ...]],
                        yes_id: int, no_id: int) -> list[float]:
        import copy

        logits = answer_logits(self.base, self.head, copy.deepcopy(cache), prefix_len, suffixes,
                               yes_id, no_id)
        return torch.softmax(logits, dim=-1)[:, 0].tolist()

    def _prob(self, hidden: torch.Tensor, yes_id: int, no_id: int) -> float:
        logits = head_logits(self.head, hidden[None], yes_id, no_id)
        return float(torch.softmax(logits, dim=-1)[0, 0])
