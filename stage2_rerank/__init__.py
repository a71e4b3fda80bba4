"""Stage 2: an instruction LLM judges each candidate span; its score is
p = P(yes) / (P(yes) + P(no)) of the next token. A library of strings and offsets."""

from stage2_rerank.candidate import Candidate
from stage2_rerank.scorer import Scorer, load_scorer

__all__ = ["Candidate", "Scorer", "load_scorer"]
