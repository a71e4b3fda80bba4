"""transformers backend (CPU fallback, or GPU): each distinct prefix is encoded once and its
KV cache reused for all the candidates that share it; only the yes and no rows of the LM
head are applied to the last hidden state.

Distinct prefixes share more than nothing: every window of a class begins with the same
instructions and class definition, often half the prefix. ``prefix_tree`` finds such runs
of tokens (a radix tree over the prefixes, as vLLM's prefix caching shares blocks), and the
backend encodes each run once and continues its KV cache into each window.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
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


@dataclass
class PrefixNode:
    """A run of tokens in the tree of prefixes: ``tokens`` continue the parent's; ``prefix``
    is the whole prefix that ends here, if one does; ``children`` continue it."""

    tokens: tuple[int, ...]
    prefix: tuple[int, ...] | None = None
    children: list[PrefixNode] = field(default_factory=list)


def _common(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = min(limit, len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def prefix_tree(prefixes, min_shared: int = 32) -> list[PrefixNode]:
    """The distinct ``prefixes`` as a tree whose inner nodes are runs of at least
    ``min_shared`` tokens that two or more of them begin with (shorter runs are not worth a
    forward pass of their own). Walking it from the roots and concatenating ``tokens``
    gives each prefix exactly once, at the node whose ``prefix`` it is."""
    if min_shared < 1:
        raise ValueError(f"min_shared must be at least 1, not {min_shared}")
    return _grow(sorted(set(map(tuple, prefixes))), 0, min_shared)


def _grow(prefixes: list[tuple[int, ...]], depth: int, min_shared: int) -> list[PrefixNode]:
    # sorted, so the prefixes sharing a run with the first of a stretch follow it, and the
    # run all of a stretch share is the first's run with its last
    nodes, i = [], 0
    while i < len(prefixes):
        first, j, shared = prefixes[i], i + 1, len(prefixes[i])
        while j < len(prefixes):
            n = _common(first, prefixes[j], shared)
            if n - depth < min_shared:
                break
            shared, j = n, j + 1
        if j == i + 1:
            nodes.append(PrefixNode(first[depth:], first))
        else:
            # only the first can end at the shared run (the prefixes are distinct and sorted)
            ends = first if len(first) == shared else None
            rest = prefixes[i + 1 : j] if ends else prefixes[i:j]
            nodes.append(PrefixNode(first[depth:shared], ends, _grow(rest, shared, min_shared)))
        i = j
    return nodes


class HFBackend:
    name = "hf"

    def __init__(self, model, *, device: str | None = None,
                 dtype: str = "auto", reuse_prefix: bool = True, suffix_batch: int = 16,
                 min_shared_tokens: int = 32) -> None:
        """``model``: a model folder, or a causal LM already in memory (used where it is,
        as it is: the judge's validation scores the model it has just trained).
        ``reuse_prefix``: False runs every prompt whole (for comparison).
        ``min_shared_tokens``: a run of tokens that several distinct prefixes begin with is
        encoded once when it is at least this long; 0: only identical prefixes share."""
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
        if min_shared_tokens < 0:
            raise ValueError(f"min_shared_tokens must be 0 or more, not {min_shared_tokens}")
        self.min_shared_tokens = min_shared_tokens

    @torch.inference_mode()
    def score_prompts(self, prompts: Sequence[PromptIds], yes_id: int, no_id: int,
                      ) -> list[float]:
        out: list[float | None] = [None] * len(prompts)
        if not prompts:
            return []
        if not self.reuse_prefix:
            for i, p in enumerate(prompts):
                ids = torch.tensor([p.ids], device=self.device)
                hidden = self.base(input_ids=ids).last_hidden_state[0, -1]
                out[i] = self._prob(hidden, yes_id, no_id)
            return out  # type: ignore[return-value]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p.prefix, []).append(i)
        # min_shared_tokens 0: no run is shared unless it is a whole prefix
        longest = max(map(len, groups)) + 1
        tree = prefix_tree(groups, self.min_shared_tokens or longest)
        self._walk(tree, None, 0, groups, prompts, out, yes_id, no_id)
        return out  # type: ignore[return-value]

    def _walk(self, nodes: list[PrefixNode], cache, depth: int,
              groups: dict[tuple[int, ...], list[int]], prompts: Sequence[PromptIds],
              out: list[float | None], yes_id: int, no_id: int) -> None:
        """Depth first: each node's tokens run once, after its parent's cache (copied: the
        parent's siblings continue it too)."""
        for node in nodes:
            here = cache
            if node.tokens:
                ids = torch.tensor([node.tokens], device=self.device)
                here = self.base(input_ids=ids, use_cache=True,
                                 past_key_values=copy.deepcopy(cache)).past_key_values
            length = depth + len(node.tokens)
            if node.prefix is not None:
                members = groups[node.prefix]
                for b in range(0, len(members), self.suffix_batch):
                    batch = members[b : b + self.suffix_batch]
                    scores = self._score_suffixes(here, length,
                                                  [prompts[i].suffix for i in batch],
                                                  yes_id, no_id)
                    for i, p in zip(batch, scores):
                        out[i] = p
            self._walk(node.children, here, length, groups, prompts, out, yes_id, no_id)

    def _score_suffixes(self, cache, prefix_len: int, suffixes: list[tuple[int, ...]],
                        yes_id: int, no_id: int) -> list[float]:
        logits = answer_logits(self.base, self.head, copy.deepcopy(cache), prefix_len, suffixes,
                               yes_id, no_id)
        return torch.softmax(logits, dim=-1)[:, 0].tolist()

    def _prob(self, hidden: torch.Tensor, yes_id: int, no_id: int) -> float:
        logits = head_logits(self.head, hidden[None], yes_id, no_id)
        return float(torch.softmax(logits, dim=-1)[0, 0])
