"""vLLM OpenAI-compatible servers by URL: one or several replicas, round robin, concurrent
requests, timeouts and retries with backoff. This is how the LLM spreads over many GPUs."""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from stage2_rerank.errors import ServiceError
from stage2_rerank.prompting import PromptIds
from stage2_rerank.scorer import yes_probability

logger = logging.getLogger(__name__)


class ServerError(ServiceError):
    """No server gave a usable answer (down, overloaded, too slow, or a broken reply)."""


# Replies that say the request itself is wrong (its prompt), not the service: retrying the
# same prompt cannot help, and another document's may pass.
REQUEST_REFUSED = (400, 413, 422)


class OpenAIBackend:
    name = "openai"

    def __init__(self, model: str, *, urls: Sequence[str] = ("http://127.0.0.1:8000",),
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.5,
                 batch_size: int = 16, concurrency: int = 8,
                 max_prompt_tokens: int | None = None) -> None:
        if not urls:
            raise ValueError("the openai backend needs at least one server URL")
        self.model = model
        self.urls = [u.rstrip("/") for u in urls]
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.batch_size, self.concurrency = batch_size, concurrency
        self._next = itertools.cycle(range(len(self.urls)))
        self._lock = threading.Lock()
        self._limit, self._limit_known = max_prompt_tokens, max_prompt_tokens is not None

    @property
    def max_prompt_tokens(self) -> int | None:
        """As given, or from the servers' ``/v1/models`` (vLLM lists each model's
        ``max_model_len``; the smallest over the replicas, less the answer token), asked
        once; None when no server tells."""
        if not self._limit_known:
            self._limit_known = True
            found = [n - 1 for n in map(self._served_length, self.urls) if n is not None]
            self._limit = min(found) if found else None
        return self._limit

    def _served_length(self, url: str) -> int | None:
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=self.timeout) as resp:
                listed = json.loads(resp.read()).get("data", [])
        except (OSError, ValueError, AttributeError) as exc:
            logger.info("%s/v1/models tells no context length (%s)", url, exc)
            return None
        lengths = [m.get("max_model_len") for m in listed
                   if isinstance(m, dict) and m.get("id") == self.model]
        return lengths[0] if lengths and isinstance(lengths[0], int) else None

    def _pick(self) -> int:
        with self._lock:
            return next(self._next)

    def score_prompts(self, prompts: Sequence[PromptIds], yes_id: int, no_id: int,
                      ) -> list[float]:
        batches = [list(prompts[i : i + self.batch_size])
                   for i in range(0, len(prompts), self.batch_size)]
        with ThreadPoolExecutor(max(1, min(self.concurrency, len(batches)))) as pool:
            results = list(pool.map(lambda b: self._score_batch(b, yes_id, no_id), batches))
        return [s for batch in results for s in batch]

    def _score_batch(self, batch: list[PromptIds], yes_id: int, no_id: int) -> list[float]:
        body = json.dumps({
            "model": self.model, "prompt": [p.ids for p in batch], "max_tokens": 1,
            "temperature": 0.0, "logprobs": 2, "logprob_token_ids": [yes_id, no_id],
            "return_tokens_as_token_ids": True}).encode()
        errors = []
        start = self._pick()
        for attempt in range(self.retries * len(self.urls)):
            url = self.urls[(start + attempt) % len(self.urls)]
            try:
                reply = self._post(f"{url}/v1/completions", body)
                return self._parse(reply, len(batch), yes_id, no_id)
            except (urllib.error.URLError, TimeoutError, ConnectionError, ServerError,
                    OSError) as exc:
                errors.append(f"{url}: {exc}")
                logger.warning("LLM server %s failed (%s); retrying", url, exc)
                time.sleep(self.backoff * 2 ** (attempt // len(self.urls)))
        raise ServerError(f"no LLM server answered after {len(errors)} tries; last: {errors[-1]}")

    def _post(self, url: str, body: bytes) -> dict:
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            if exc.code in REQUEST_REFUSED:
                raise RuntimeError(f"{url} refused the request: HTTP {exc.code}: {detail}"
                                   ) from None
            # 5xx, a rate limit (429), or a server that does not serve this model (404) or
            # this user (401, 403): the service's state, which a later attempt may find fixed
            raise ServerError(f"HTTP {exc.code}: {detail}") from None
        except json.JSONDecodeError as exc:
            raise ServerError(f"reply is not JSON ({exc})") from None

    @staticmethod
    def _parse(reply: dict, n: int, yes_id: int, no_id: int) -> list[float]:
        choices = sorted(reply.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != n:
            raise ServerError(f"expected {n} choices, got {len(choices)}")
        scores = []
        for c in choices:
            top = (c.get("logprobs") or {}).get("top_logprobs") or [None]
            step = top[0] or {}
            yes, no = step.get(f"token_id:{yes_id}"), step.get(f"token_id:{no_id}")
            if yes is None or no is None:
                raise ServerError(f"choice {c.get('index')}: no log-probability for the answer "
                                  f"tokens {yes_id}/{no_id} (is logprob_token_ids supported?)")
            scores.append(yes_probability(yes, no))
        return scores
