"""Training the judge on the user's gold data: out-of-fold stage-1 candidates, labelled by
their best character overlap with gold, taught to the stage-2 LLM (``pipeline train-judge``).

A document is proposed on only by the members that did not train on it (the members of its
own fold), so the judge learns from the mistakes stage 1 makes on unseen text, which are the
ones it will be asked about. A held-out gold corpus (``candidates_from``) is proposed on by
the whole ensemble.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.documents import Document, Span
from pipeline.errors import PipelineError
from pipeline.predict import char_probabilities, propose
from pipeline.thresholds import Thresholds
from pipeline.training import DEFAULT_GROUP_PATTERN, fold_of, held_for_validation
from pipeline.tune import match
from pipeline.writers import atomic_write, folder_lock
from stage1_ensemble.ensemble import data_hash

logger = logging.getLogger(__name__)

RECORD = "judge.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Labelled:
    """A stage-1 candidate, the overlap it has with gold, and the split it belongs to."""

    doc: Document
    span: Span
    label: float  # best 2|g∩p|/(|g|+|p|) with a gold span of its class, or exact match (0/1)
    exact: bool
    validation: bool


def out_of_fold_candidates(docs: Sequence[Document], ensemble, *, threshold: float,
                           group_pattern: str = DEFAULT_GROUP_PATTERN, char_cache=None,
                           ) -> list[list[Span]]:
    """Stage-1 candidates of each document from the members that did not train on it."""
    out: list[list[Span]] = [[] for _ in docs]
    for cls in ensemble.classes:
        members = ensemble.members_of(cls)
        added = [m.name for m in members if m.kind != "binary"]
        if added:  # which documents they saw is not known (a gazetteer of this corpus: all)
            raise PipelineError(
                f"the ensemble's {cls} members {', '.join(added)} were added without folds "
                "(`pipeline ensemble add`): out-of-fold candidates cannot be told for them. "
                "Give a held-out gold corpus (--candidates-from) instead of --corpus, or train "
                "the judge before adding them")
        folds = {m.n_folds for m in members}
        if len(folds) > 1:  # which documents a member did not see would be ambiguous
            raise PipelineError(f"the ensemble's {cls} members were trained with different "
                                f"--folds ({', '.join(map(str, sorted(folds)))}); train-judge "
                                "needs one fold split")
        if max(folds) < 2:
            raise PipelineError(
                f"the ensemble's {cls} members were trained with --folds {max(folds)}: every "
                "member saw every training document, so none can propose on one it did not "
                "train on. Train with --folds 2 or more, or give a held-out gold corpus "
                "(--candidates-from)")
        n_folds = max(folds)
        for fold in range(n_folds):
            mine = [m for m in members if m.fold == fold]
            idx = [i for i, d in enumerate(docs) if cls in d.classes((cls,))
                   and fold_of(d.id, n_folds, group_pattern) == fold]
            if not mine or not idx:
                continue
            sub = ensemble.restricted(mine)
            some = [docs[i] for i in idx]
            probs = char_probabilities(some, sub, cache_for(char_cache, sub))
            for i, spans in zip(idx, propose(some, probs, Thresholds.uniform(threshold))):
                out[i] += spans
    for spans in out:
        spans.sort(key=lambda s: (s.start, s.end, s.label))
    return out


def cache_for(char_cache, ensemble):
    """The character-probability cache of ``ensemble`` in ``char_cache``'s folder."""
    if char_cache is None:
        return None
    from stage1_ensemble.cache import CharProbCache

    return CharProbCache(char_cache.path.parent, ensemble.probs_identity)


def ensemble_candidates(docs: Sequence[Document], ensemble, *, threshold: float,
                        char_cache=None) -> list[list[Span]]:
    """Stage-1 candidates of the whole ensemble (for documents none of it trained on)."""
    probs = char_probabilities(docs, ensemble, cache_for(char_cache, ensemble))
    return propose(docs, probs, Thresholds.uniform(threshold))


def label_candidates(docs: Sequence[Document], candidates: Sequence[Sequence[Span]], *,
                     exact: bool = False, validation_share: int = 0,
                     group_pattern: str = DEFAULT_GROUP_PATTERN) -> list[Labelled]:
    """Each candidate with its label: its best character overlap with a gold span of its
    class in its document (the official char metric's Dice), or 1/0 for an exact match
    with ``exact``. 1/``validation_share`` of the document groups are held out."""
    out = []
    by_class: dict[str, list[tuple[Document, Span]]] = {}
    for doc, spans in zip(docs, candidates):
        for s in spans:
            by_class.setdefault(s.label, []).append((doc, s))
    for cls, pairs in by_class.items():
        gold = [s for d in docs for s in d.spans if s.label == cls]
        found = match(gold, [s for _, s in pairs])
        for (doc, span), best, hit in zip(pairs, found.best, found.exact):
            held = held_for_validation(doc.id, validation_share, group_pattern)
            out.append(Labelled(doc, span, float(hit) if exact else float(best), bool(hit),
                                held))
    return out


def uncertain(items: Sequence[Labelled], below: float | None) -> list[Labelled]:
    """The candidates whose stage-1 score is below ``below`` (all for None): the ones a
    judge routed to by ``tune`` is asked about."""
    if below is None:
        return list(items)
    return [i for i in items if (i.span.stage1_score or 0.0) < below]


def describe(items: Sequence[Labelled]) -> dict:
    """Counts per class and split, and how the labels are spread."""
    out: dict = {}
    for cls in sorted({i.span.label for i in items}):
        mine = [i for i in items if i.span.label == cls]
        labels = np.array([i.label for i in mine])
        bins = Counter("0" if x == 0 else "1" if x == 1 else "(0,0.5)" if x < 0.5 else "[0.5,1)"
                       for x in labels)
        out[cls] = {"candidates": len(mine),
                    "train": sum(not i.validation for i in mine),
                    "validation": sum(i.validation for i in mine),
                    "exact": sum(i.exact for i in mine),
                    "mean_label": round(float(labels.mean()), 4) if len(mine) else None,
                    "labels": {k: bins.get(k, 0) for k in ("0", "(0,0.5)", "[0.5,1)", "1")}}
    return out


def validation_figures(items: Sequence[Labelled], judge_p: Sequence[float]) -> dict:
    """Per class and pooled: the judge's ROC AUC and Brier score against the labels, beside
    the stage-1 score's on the same candidates (does the judge know something stage 1 does
    not?). A candidate counts as positive for the AUC when its label is at least 0.5."""
    from stage2_rerank.training import brier, finite, roc_auc

    out = {}
    for cls in [*sorted({i.span.label for i in items}), "all"]:
        idx = [k for k, i in enumerate(items) if cls in ("all", i.span.label)]
        labels = [items[k].label for k in idx]
        positive = [y >= 0.5 for y in labels]
        s1 = [items[k].span.stage1_score or 0.0 for k in idx]
        p = [judge_p[k] for k in idx]
        out[cls] = {"candidates": len(idx), "positives": sum(positive),
                    "judge_auc": finite(roc_auc(p, positive)),
                    "stage1_auc": finite(roc_auc(s1, positive)),
                    "judge_brier": finite(brier(p, labels)),
                    "stage1_brier": finite(brier(s1, labels))}
    return out


def prompt_builder(base: str | Path, config):
    """The prompt builder of the judge: the base model's tokenizer and the config's
    template and context, as ``load_scorer`` builds it for the trained judge."""
    from prompts import load_template
    from stage2_rerank.prompting import PromptBuilder
    from stage2_rerank.scorer import load_tokenizer

    return PromptBuilder(load_tokenizer(base), load_template(config.template),
                         max_context_tokens=config.max_context_tokens,
                         use_chat_template=config.use_chat_template)


def as_candidates(items: Sequence[Labelled]):
    from stage2_rerank import Candidate

    return [Candidate(i.doc.text, i.span.start, i.span.end, i.span.label, i.doc.id, i.doc.lang,
                      i.span.stage1_score) for i in items]


def training_prompts(items: Sequence[Labelled], builder):
    """The prompts of ``items`` as token ids, exactly as the scorer will send them."""
    return builder.build(as_candidates(items))


def plan_of(config, base: str, data: str) -> dict:
    """What a training run is: resuming is only allowed into the same plan. A setting
    added after judges were trained is left out at its default, so that a training begun
    before it resumes (and a finished one is recognised) instead of being refused."""
    settings = config.model_dump(mode="json")
    if settings.get("max_stage1_score") is None:
        settings.pop("max_stage1_score", None)
    return {"base": base, "data_hash": data, "config": settings}


def train_judge(items: Sequence[Labelled], *, base: Path, out: Path, config,
                ensemble_identity: str, on_log: Callable[[dict], None] | None = None,
                on_step: Callable[[str], None] | None = None) -> dict:
    """Train, save and validate the judge under ``out``; returns its record (judge.json).

    Resumable: checkpoints go to ``out/work`` every ``save_steps`` steps, and the same
    command continues from the last one. A folder holding another plan is refused."""
    from stage2_rerank.backends.hf import HFBackend
    from stage2_rerank.scorer import Scorer, model_identity
    from stage2_rerank.training import Example, load_base, prefix_groups, save_judge, train_judge_model

    say = on_step or (lambda msg: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, "pipeline train-judge"):
        digest = data_hash([(i.doc.id, i.doc.text,
                             [(i.span.label, i.span.start, i.span.end),
                              (str(i.label), int(i.validation), 0)])
                            for i in items])
        plan = plan_of(config, str(base), digest)
        plan_file = out / "work" / "plan.json"
        if plan_file.exists():
            then = json.loads(plan_file.read_text(encoding="utf-8"))
            if then != plan:
                changed = [k for k in plan if then.get(k) != plan[k]]
                raise PipelineError(f"{out}: a judge training with other {', '.join(changed)} "
                                    "is in this folder; use another --out, or delete it")
        if (out / RECORD).exists():
            record = json.loads((out / RECORD).read_text(encoding="utf-8"))
            if record.get("plan") == plan:
                say(f"{out / RECORD}: this judge is trained already")
                return record
            raise PipelineError(f"{out / RECORD}: a judge trained with other settings or data "
                                "is in this folder; use another --out, or delete it")
        plan_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(plan_file, json.dumps(plan, indent=2))

        builder = prompt_builder(base, config)
        tokenizer, template = builder.tokenizer, builder.template
        cands = as_candidates(items)
        prompts = builder.build(cands)  # training_prompts(), with the candidates kept
        train = [Example(p, i.label) for p, i in zip(prompts, items) if not i.validation]
        rows = prefix_groups(train, config.max_group)
        say(f"training on {len(train)} candidates ({len(rows)} prompt prefixes), "
            f"{config.max_steps} steps")
        model = load_base(base, config)
        start = time.perf_counter()
        model = train_judge_model(model, rows, yes_id=builder.yes_id, no_id=builder.no_id,
                                  config=config, work_dir=out / "work", on_log=on_log)
        seconds = time.perf_counter() - start

        held = [k for k, i in enumerate(items) if i.validation]
        figures = {}
        if held:
            say(f"validating on {len(held)} held-out candidates")
            scorer = Scorer(HFBackend(model), builder, identity="validation")
            p = scorer.score([cands[k] for k in held])
            figures = validation_figures([items[k] for k in held], p)

        say(f"saving the judge to {out}")
        lora = save_judge(model, tokenizer, out)
        atomic_write(out / "template.json", template.model_dump_json(indent=2))
        record = {
            "format_version": FORMAT_VERSION, "base": str(Path(base).resolve()),
            "base_identity": model_identity(base), "ensemble": ensemble_identity,
            "prompt": {"template": template.name, "template_file": "template.json",
                       "max_context_tokens": config.max_context_tokens,
                       "use_chat_template": builder.chat,
                       "yes_id": builder.yes_id, "no_id": builder.no_id},
            "config": config.model_dump(mode="json"), "lora": lora,
            "data": {"hash": digest, **describe(items)},
            "validation": figures,
            "training": {"seconds": round(seconds, 1), "steps": config.max_steps,
                         "train_candidates": len(train), "prefix_groups": len(rows)},
            "plan": plan,
        }
        write_candidates(out / "candidates.jsonl", items,
                         dict(zip(held, p)) if held else {})
        atomic_write(out / RECORD, json.dumps(record, indent=2))  # last: marks it finished
        return record


def write_candidates(path: Path, items: Sequence[Labelled], judge_p: dict[int, float]) -> None:
    """The training and validation candidates, a JSON line each (with the judge's score on
    the held-out ones), for reading what the judge learnt from."""
    lines = []
    for k, i in enumerate(items):
        lines.append(json.dumps({
            "id": i.doc.id, "label": i.span.label, "start": i.span.start, "end": i.span.end,
            "text": i.doc.mention(i.span), "stage1_score": round(i.span.stage1_score or 0, 4),
            "target": round(i.label, 4), "split": "validation" if i.validation else "train",
            **({"judge": round(judge_p[k], 4)} if k in judge_p else {})}, ensure_ascii=False))
    atomic_write(path, "\n".join(lines) + "\n")
