"""The judge learns the task: out-of-fold candidates, labels, the train/serve prompt, the
loss, a tiny LLM that overfits and reloads, resuming, and the command's refusals."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.documents import Document, Span
from pipeline.judge import Labelled, label_candidates, out_of_fold_candidates, train_judge
from pipeline.training import fold_of
from stage2_rerank import Candidate, load_scorer
from stage2_rerank.training import JudgeConfig, group_diffs, judge_loss, load_base, roc_auc
from tests.cli_inprocess import run_cli

TEXT = "Paciente con diabetes mellitus y fiebre alta; niega dolor torácico agudo."


def doc_with(gold: list[tuple[int, int]], text: str = TEXT, doc_id: str = "d") -> Document:
    return Document(doc_id, text, spans=[Span(doc_id, "DISEASE", s, e) for s, e in gold])


def test_labels_equal_a_hand_computation():
    gold = [(0, 10), (20, 30), (32, 40)]
    doc = doc_with(gold)
    cands = [(0, 10), (20, 25), (12, 18), (20, 40)]
    spans = [[Span("d", "DISEASE", s, e, stage1_score=0.5) for s, e in cands]]
    got = [i.label for i in label_candidates([doc], spans)]
    # exact; partial 2*5/(10+5); none; two gold spans under one: the better of
    # 2*10/(10+20) and 2*8/(8+20)
    assert got == pytest.approx([1.0, 2 * 5 / 15, 0.0, 2 * 10 / 30])
    exact = [i.label for i in label_candidates([doc], spans, exact=True)]
    assert exact == [1.0, 0.0, 0.0, 0.0]
    other_class = [[Span("d", "SYMPTOM", 0, 10, stage1_score=0.5)]]
    assert [i.label for i in label_candidates([doc], other_class)] == [0.0]


def test_loss_is_binary_cross_entropy_of_the_yes_no_margin():
    diff, labels = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.25])

    def sig(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    expected = (-math.log(sig(2.0))
                - (0.25 * math.log(sig(-1.0)) + 0.75 * math.log(1 - sig(-1.0)))) / 2
    assert float(judge_loss(diff, labels)) == pytest.approx(expected, rel=1e-6)


def test_roc_auc_counts_ties_half():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5], [False, True]) == pytest.approx(0.5)
    assert roc_auc([0.5, 0.7], [True, True]) is None


CANDS = [(13, 30, 1.0), (33, 39, 1.0), (0, 8, 0.0), (57, 73, 1.0), (40, 44, 0.0), (13, 21, 0.5)]


def labelled(validation: bool = False) -> list[Labelled]:
    doc = doc_with([(13, 30), (33, 39), (57, 73)])
    return [Labelled(doc, Span("d", "DISEASE", s, e, stage1_score=0.5), y, y == 1.0, validation)
            for s, e, y in CANDS]


def test_training_prompt_ids_are_the_ids_the_scorer_sends(judge_llm_dir):
    from pipeline.judge import prompt_builder, training_prompts

    config = JudgeConfig(max_context_tokens=48)
    builder = prompt_builder(judge_llm_dir, config)
    trained = training_prompts(labelled(), builder)
    scorer = load_scorer("hf", judge_llm_dir, max_context_tokens=48)
    sent = []
    real = scorer.backend.score_prompts
    scorer.backend.score_prompts = lambda prompts, y, n: (sent.extend(prompts), real(prompts, y, n))[1]
    scorer.score([Candidate(i.doc.text, i.span.start, i.span.end, i.span.label, i.doc.id)
                  for i in labelled()])
    assert [p.ids for p in sent] == [p.ids for p in trained]
    assert (builder.yes_id, builder.no_id) == (scorer.builder.yes_id, scorer.builder.no_id)


def test_a_template_that_shows_the_stage1_score_trains_on_what_rerank_sends(judge_llm_dir):
    """With ``rerank_score_v1`` the prompt carries each candidate's stage-1 score: the ids
    training builds equal those ``rerank`` sends for the same spans, the score changes
    only the suffix, and a candidate without a score is refused by name."""
    from pipeline.judge import prompt_builder, training_prompts
    from pipeline.predict import rerank
    from pipeline.thresholds import Thresholds

    config = JudgeConfig(template="rerank_score_v1", max_context_tokens=48)
    builder = prompt_builder(judge_llm_dir, config)
    items = [Labelled(i.doc, Span("d", "DISEASE", i.span.start, i.span.end,
                                  stage1_score=0.1 * (k + 1)), i.label, i.exact, False)
             for k, i in enumerate(labelled())]
    trained = training_prompts(items, builder)
    scorer = load_scorer("hf", judge_llm_dir, template="rerank_score_v1",
                         max_context_tokens=48)
    sent = []
    real = scorer.backend.score_prompts
    scorer.backend.score_prompts = lambda prompts, y, n: (sent.extend(prompts), real(prompts, y, n))[1]
    rerank([items[0].doc], [[i.span for i in items]], scorer, Thresholds.uniform(0.05))
    assert [p.ids for p in sent] == [p.ids for p in trained]
    shown = builder.render_text(Candidate(TEXT, 13, 30, "DISEASE", "d", score=0.4321))
    assert "confidence: 0.43\n" in shown
    # candidates 0 and 5 differ in span and score, not in prefix; the same span with
    # another score differs in its suffix only
    assert trained[0].prefix == trained[5].prefix
    other = builder.build([Candidate(TEXT, 13, 30, "DISEASE", "d", score=0.9)])[0]
    assert other.prefix == trained[0].prefix and other.suffix != trained[0].suffix
    with pytest.raises(ValueError, match=r"candidate 0 \(document 'd'\): .*stage-1 score"):
        builder.build([Candidate(TEXT, 13, 30, "DISEASE", "d")])


def test_uncertain_keeps_the_candidates_below_the_score():
    from pipeline.judge import uncertain

    doc = doc_with([])
    items = [Labelled(doc, Span("d", "DISEASE", 0, 5, stage1_score=s), 0.0, False, False)
             for s in (0.1, 0.49, 0.5, 0.9, None)]
    assert [i.span.stage1_score for i in uncertain(items, 0.5)] == [0.1, 0.49, None]
    assert uncertain(items, None) == items


def test_a_plan_from_before_max_stage1_score_is_the_same_plan():
    from pipeline.judge import plan_of

    before = plan_of(JudgeConfig(), "base", "h")
    before["config"].pop("max_stage1_score", None)  # as plans were written before the key
    assert plan_of(JudgeConfig(), "base", "h") == before
    assert plan_of(JudgeConfig(max_stage1_score=0.5), "base", "h")["config"][
        "max_stage1_score"] == 0.5


def test_shared_prefix_gives_the_margins_of_whole_prompts(judge_llm_dir):
    from pipeline.judge import prompt_builder, training_prompts

    builder = prompt_builder(judge_llm_dir, JudgeConfig())
    prompts = training_prompts(labelled(), builder)
    model = load_base(judge_llm_dir, JudgeConfig(lora=False))
    together = group_diffs(model, prompts[0].prefix, [p.suffix for p in prompts],
                           builder.yes_id, builder.no_id)
    head = model.get_output_embeddings().weight
    for k, p in enumerate(prompts):
        hidden = model.get_decoder()(input_ids=torch.tensor([p.ids])).last_hidden_state[0, -1]
        whole = hidden @ head[builder.yes_id] - hidden @ head[builder.no_id]
        assert float(together[k]) == pytest.approx(float(whole), abs=1e-3)


FAST = dict(max_steps=100, learning_rate=5e-3, warmup_steps=0, groups_per_step=1,
            validation_share=0, save_steps=20, logging_steps=20)


def test_tiny_judge_overfits_saves_and_reloads(judge_llm_dir, tmp_path):
    # each candidate once to train on, once again held out: the validation scores come
    # from the model in memory, the reload must give them back
    items = labelled() + labelled(validation=True)
    record = train_judge(items, base=judge_llm_dir, out=tmp_path / "judge",
                         config=JudgeConfig(**FAST), ensemble_identity="e")
    assert record["lora"] == {"adapter": "adapter", "rank": 8}
    assert (tmp_path / "judge" / "model.safetensors").exists()
    assert (tmp_path / "judge" / "adapter" / "adapter_config.json").exists()
    rows = [json.loads(x) for x in (tmp_path / "judge" / "candidates.jsonl").read_text().splitlines()]
    held = [r["judge"] for r in rows if r["split"] == "validation"]
    scores = load_scorer("hf", tmp_path / "judge").score(
        [Candidate(i.doc.text, i.span.start, i.span.end, "DISEASE") for i in labelled()])
    assert scores == pytest.approx(held, abs=1e-3)
    for (_, _, y), p in zip(CANDS, scores):
        if y == 1.0:
            assert p > 0.9
        elif y == 0.0:
            assert p < 0.1
    v = record["validation"]["DISEASE"]
    assert v["candidates"] == 6 and v["positives"] == 4 and v["judge_auc"] == 1.0
    assert record["prompt"]["max_context_tokens"] == 1024 and record["data"]["DISEASE"]["labels"] \
        == {"0": 4, "(0,0.5)": 0, "[0.5,1)": 2, "1": 6}
    # the same command again: nothing to do; another plan in the folder: refused
    again = train_judge(items, base=judge_llm_dir, out=tmp_path / "judge",
                        config=JudgeConfig(**FAST), ensemble_identity="e")
    assert again == record
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match="other config"):
        train_judge(items, base=judge_llm_dir, out=tmp_path / "judge",
                    config=JudgeConfig(**{**FAST, "max_steps": 61}), ensemble_identity="e")


def test_lora_in_the_last_layers_only(judge_llm_dir):
    model = load_base(judge_llm_dir, JudgeConfig(lora_layers=1))
    adapted = {n.split(".layers.")[1].split(".")[0] for n, p in model.named_parameters()
               if p.requires_grad}
    assert adapted == {"1"}  # the tiny model has layers 0 and 1
    every = load_base(judge_llm_dir, JudgeConfig())
    assert {n.split(".layers.")[1].split(".")[0] for n, p in every.named_parameters()
            if p.requires_grad} == {"0", "1"}


def test_full_fine_tuning_has_no_adapter(judge_llm_dir, tmp_path):
    record = train_judge(labelled(), base=judge_llm_dir, out=tmp_path / "full",
                         config=JudgeConfig(**{**FAST, "lora": False, "max_steps": 5}),
                         ensemble_identity="e")
    assert record["lora"] is None and not (tmp_path / "full" / "adapter").exists()
    with pytest.raises(ValueError, match="fully fine-tuned"):
        load_scorer("vllm", tmp_path / "full", lora=True)


KILLED = """
import sys
from pathlib import Path
from tests.test_judge import FAST, labelled
from pipeline.judge import train_judge
from stage2_rerank.training import JudgeConfig
train_judge(labelled(), base=Path(sys.argv[1]), out=Path(sys.argv[2]), ensemble_identity="e",
            config=JudgeConfig(**{**FAST, "max_steps": 400, "save_steps": 10}))
"""


def test_a_checkpoint_cut_short_is_passed_over(tmp_path):
    from stage2_rerank.training import last_checkpoint

    assert last_checkpoint(tmp_path) is None
    for step, whole in ((10, True), (20, True), (30, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if whole:
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-20"
    (tmp_path / "checkpoint-20" / "trainer_state.json").write_text('{"global_')
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-10"


def test_killed_training_resumes_and_finishes(judge_llm_dir, tmp_path, caplog):
    out = tmp_path / "judge"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(judge_llm_dir), str(out)],
                            cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((out / "work").glob("checkpoint-*")) and time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training ended early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "judge.json").exists()
    import logging

    with caplog.at_level(logging.INFO, logger="stage2_rerank.training"):
        record = train_judge(labelled(), base=judge_llm_dir, out=out, ensemble_identity="e",
                             config=JudgeConfig(**{**FAST, "max_steps": 400, "save_steps": 10}))
    assert "resuming the judge's training from" in caplog.text
    assert record["training"]["steps"] == 400 and (out / "judge.json").exists()


# -- out-of-fold candidates from a real (tiny) two-fold ensemble --------------------------

WORDS = ["diabetes", "asma", "gripe", "anemia", "artritis", "hepatitis"]


def fold_docs() -> list[Document]:
    docs = []
    for i in range(8):
        a, b = WORDS[i % 6], WORDS[(i + 2) % 6]
        text = f"Paciente {i} con {a} y sin {b} previa."
        spans = [Span(f"n{i}", "DISEASE", text.index(a), text.index(a) + len(a))]
        docs.append(Document(f"n{i}", text, lang="es", spans=spans))
    return docs


@pytest.fixture(scope="module")
def two_fold_ensemble(tmp_path_factory) -> Path:
    from pipeline.training import train_ensemble
    from stage1_ensemble.config import TrainConfig
    from tests.tiny_models import tiny_bert_encoder

    root = tmp_path_factory.mktemp("folds")
    encoder = tiny_bert_encoder(root / "encoder", corpus=[d.text for d in fold_docs()])
    config = TrainConfig(learning_rate=3e-3, warmup_steps=0, max_steps=40, batch_size=4,
                         logging_steps=1000, max_length=32, stride=4)
    train_ensemble(fold_docs(), out=root / "ens", encoders=[str(encoder)],
                   classes=["DISEASE"], n_folds=2, config=config)
    return root / "ens"


def test_no_candidate_comes_from_a_member_that_trained_on_its_document(two_fold_ensemble,
                                                                     monkeypatch):
    from stage1_ensemble.ensemble import Ensemble

    docs = fold_docs()
    assert {fold_of(d.id, 2) for d in docs} == {0, 1}
    ens = Ensemble.load(two_fold_ensemble)
    asked: list[tuple[set[int], list[str]]] = []
    real = Ensemble.char_probs

    def spy(self, texts, classes=None):
        asked.append(({m.fold for m in self.manifest.members}, list(texts)))
        return real(self, texts, classes)

    monkeypatch.setattr(Ensemble, "char_probs", spy)
    cands = out_of_fold_candidates(docs, ens, threshold=0.01)
    assert len(asked) == 2 and sum(len(t) for _, t in asked) == len(docs)
    fold_of_text = {d.text: fold_of(d.id, 2) for d in docs}
    for folds, texts in asked:
        assert len(folds) == 1  # one fold's members only...
        assert {fold_of_text[t] for t in texts} == folds  # ...on their held-out documents
    assert all(s.doc_id == d.id and s.label == "DISEASE" for d, c in zip(docs, cands) for s in c)
    assert sum(map(len, cands)) > 0


def test_weighing_uses_out_of_fold_members_on_the_training_corpus_and_all_on_another(
        two_fold_ensemble, tmp_path, monkeypatch):
    """On the corpus the folds were cut from, each document is seen by the member that did
    not train on it; on a held-out corpus (here the same notes under other names: another
    data hash) by both members, as when the ensemble runs, and the manifest says which."""
    import shutil

    from stage1_ensemble.ensemble import Ensemble

    asked: list[tuple[set[int], int]] = []
    real = Ensemble.char_probs

    def spy(self, texts, classes=None):
        asked.append(({m.fold for m in self.manifest.members}, len(texts)))
        return real(self, texts, classes)

    monkeypatch.setattr(Ensemble, "char_probs", spy)
    docs = fold_docs()
    held = [Document("h" + d.id, d.text, lang=d.lang,
                     spans=[Span("h" + d.id, s.label, s.start, s.end) for s in d.spans])
            for d in docs]
    for name, corpus_docs, per_fold in (("train", docs, True), ("held", held, False)):
        ens_dir = tmp_path / f"ens-{name}"
        shutil.copytree(two_fold_ensemble, ens_dir, ignore=shutil.ignore_patterns("cache"))
        asked.clear()
        code, _, err = run_cli("ensemble", "weigh", "--ensemble", ens_dir, "--gold",
                               write_corpus(tmp_path / name, corpus_docs))
        assert code == 0, err
        record = Ensemble.load(ens_dir).manifest.weighing
        assert record["held_out"] is not per_fold
        if per_fold:
            assert "out-of-fold members only" in err
            assert sorted(asked) == [({f}, sum(fold_of(d.id, 2) == f for d in docs))
                                     for f in (0, 1)]
        else:
            assert "every member proposes on every document" in err
            assert asked == [({0, 1}, len(docs))]


def one_error_line(err: str) -> bool:
    """The command's own words are one line (libraries may have shown progress before)."""
    return "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: ") \
        and err.count("error: ") == 1


def write_corpus(folder: Path, docs: list[Document]) -> Path:
    from pipeline.writers import write_brat

    write_brat(docs, folder)
    return folder


def test_train_judge_command(two_fold_ensemble, judge_llm_dir, tmp_path):
    corpus = write_corpus(tmp_path / "train", fold_docs())
    cfg = tmp_path / "judge.json"
    cfg.write_text(json.dumps({**FAST, "max_steps": 4, "validation_share": 2,
                               "stage1_threshold": 0.05, "max_stage1_score": 0.999}))
    # the ensemble and the prompt as run, tune and ablate will have them (the run config)
    shared = tmp_path / "run.json"
    shared.write_text(json.dumps({"ensemble": {"path": str(two_fold_ensemble)},
                                  "llm": {"max_context_tokens": 64}}))
    code, out, err = run_cli("train-judge", "--run-config", shared, "--corpus", corpus,
                             "--base", judge_llm_dir, "--out", tmp_path / "j", "--config", cfg)
    assert code == 0, err
    record = json.loads((tmp_path / "j" / "judge.json").read_text())
    assert record["config"]["max_steps"] == 4 and record["prompt"]["max_context_tokens"] == 64
    d = record["data"]["DISEASE"]
    assert d["candidates"] == d["train"] + d["validation"] > 0
    assert "DISEASE:" in err and "candidates" in err and "wrote" in out
    assert "have a stage-1 score below max_stage1_score 0.999" in err
    # the judge's own prompt settings are the default wherever it is served
    assert load_scorer("hf", tmp_path / "j").builder.max_context_tokens == 64


def test_train_judge_subset_keeps_other_shares_out(two_fold_ensemble, judge_llm_dir, tmp_path):
    """--subset draws candidates from one share of the documents only, so that tune and
    ablate may use the other shares of the same held-out corpus."""
    from pipeline.training import in_subset

    held = write_corpus(tmp_path / "held", fold_docs())
    cfg = tmp_path / "judge.json"
    cfg.write_text(json.dumps({**FAST, "max_steps": 1, "stage1_threshold": 0.05}))
    seen = {}
    for share in ("0/2", "1/2"):
        out = tmp_path / f"j{share[0]}"
        code, _, err = run_cli("train-judge", "--ensemble", two_fold_ensemble,
                               "--candidates-from", held, "--subset", share,
                               "--base", judge_llm_dir, "--out", out, "--config", cfg)
        assert code == 0, err
        lines = (out / "candidates.jsonl").read_text().splitlines()
        seen[share] = {json.loads(line)["id"] for line in lines}
        part = (int(share[0]), 2)
        assert seen[share] and all(in_subset(i, part) for i in seen[share])
    assert not seen["0/2"] & seen["1/2"]
    # validation_share 1 holds every group out: nothing would be left to train on
    cfg.write_text(json.dumps({**FAST, "max_steps": 1, "stage1_threshold": 0.05,
                               "validation_share": 1}))
    code, _, err = run_cli("train-judge", "--ensemble", two_fold_ensemble, "--candidates-from",
                           held, "--subset", "0/2", "--base", judge_llm_dir,
                           "--out", tmp_path / "jv", "--config", cfg)
    assert code == 2 and "none is left to train on" in err and one_error_line(err)
    code, _, err = run_cli("train-judge", "--ensemble", two_fold_ensemble, "--candidates-from",
                           held, "--subset", "2/1", "--base", judge_llm_dir,
                           "--out", tmp_path / "j")
    assert code == 2 and "--subset" in err and one_error_line(err)


def test_validation_groups_spread_over_every_subset_share():
    """The held-out groups have their own hash: with --subset i/n and validation_share n
    (the same count) a share is neither all held out nor none of it."""
    from pipeline.training import document_group, held_for_validation, in_subset

    ids = [f"case{k}_{lang}" for k in range(400) for lang in ("es", "en")]
    for part in ((0, 2), (1, 2), (3, 5)):
        share = [i for i in ids if in_subset(i, part)]
        held = [i for i in share if held_for_validation(i, part[1])]
        assert 0.5 / part[1] < len(held) / len(share) < 1.5 / part[1]
        # translations of a case go together
        assert len({document_group(i) for i in held}) * 2 == len(held)
    assert not any(held_for_validation(i, 0) for i in ids)
    assert all(held_for_validation(i, 1) for i in ids)


def test_train_judge_refusals(two_fold_ensemble, judge_llm_dir, tiny_ensemble, tmp_path):
    from tests.tiny_models import tiny_bert_encoder

    corpus = write_corpus(tmp_path / "train", fold_docs())
    bad = tmp_path / "bad.json"
    bad.write_text('{"max_stepz": 3}')
    code, _, err = run_cli("train-judge", "--ensemble", two_fold_ensemble, "--corpus", corpus,
                           "--base", judge_llm_dir, "--out", tmp_path / "j", "--config", bad)
    assert code == 2 and "bad.json: not a valid JudgeConfig: max_stepz: Extra inputs" in err
    assert one_error_line(err)
    encoder = tiny_bert_encoder(tmp_path / "bert")
    code, _, err = run_cli("train-judge", "--ensemble", two_fold_ensemble, "--corpus", corpus,
                           "--base", encoder, "--out", tmp_path / "j")
    assert code == 2 and "not a causal language model" in err
    assert one_error_line(err)
    code, _, err = run_cli("train-judge", "--ensemble", tiny_ensemble, "--corpus", corpus,
                           "--base", judge_llm_dir, "--out", tmp_path / "j")
    assert code == 2 and "is not the corpus the ensemble was trained on" in err
    from tests.test_stage1_models import two_docs

    own = write_corpus(tmp_path / "own", two_docs())
    code, _, err = run_cli("train-judge", "--ensemble", tiny_ensemble, "--corpus", own,
                           "--base", judge_llm_dir, "--out", tmp_path / "j")
    assert code == 2 and "trained with --folds 1" in err and "--candidates-from" in err
    assert one_error_line(err)
    # a member added without folds (a gazetteer of this very corpus, say) could leak
    import shutil

    mixed = tmp_path / "mixed"
    shutil.copytree(two_fold_ensemble, mixed, ignore=shutil.ignore_patterns("cache"))
    assert run_cli("ensemble", "add", "--ensemble", mixed, "--kind", "gazetteer", "--class",
                   "DISEASE", "--from-corpus", corpus)[0] == 0
    code, _, err = run_cli("train-judge", "--ensemble", mixed, "--corpus", corpus,
                           "--base", judge_llm_dir, "--out", tmp_path / "j")
    assert code == 2 and "disease-gazetteer were added without folds" in err
    assert one_error_line(err)


def test_llm_settings_belong_to_their_backend():
    from stage2_rerank.config import LlmConfig

    cfg = LlmConfig(max_context_tokens=64, dtype="float32", max_model_len=2048,
                    engine={"gpu_memory_utilization": 0.5})
    assert cfg.scorer_options("vllm") == {"max_context_tokens": 64, "dtype": "float32",
                                          "max_model_len": 2048, "gpu_memory_utilization": 0.5}
    with pytest.raises(ValueError, match="max_model_len is for the vllm backend, not hf"):
        cfg.scorer_options("hf")
    with pytest.raises(ValueError, match="dtype is for the hf and vllm backends, not openai"):
        LlmConfig(dtype="bfloat16").scorer_options("openai")
    assert LlmConfig(template="x.json").scorer_options("openai") == {"template": "x.json"}


def test_ablate_compares_several_judges(two_fold_ensemble, judge_llm_dir, tmp_path):
    from pipeline.thresholds import Thresholds

    gold = write_corpus(tmp_path / "gold", fold_docs())
    judge = tmp_path / "judge"
    train_judge(labelled(), base=judge_llm_dir, out=judge, ensemble_identity="e",
                config=JudgeConfig(**{**FAST, "max_steps": 3, "max_context_tokens": 64}))
    paths = []
    for k, t2 in enumerate((0.3, 0.6)):
        paths.append(tmp_path / f"t{k}.json")
        paths[-1].write_text(Thresholds.uniform(0.2, t2).model_dump_json())
    common = ["ablate", "--ensemble", two_fold_ensemble, "--gold", gold, "--llm-backend", "hf",
              "--out", tmp_path / "ab"]
    code, _, err = run_cli(*common, "--llm", judge_llm_dir, "--llm", judge,
                           "--thresholds", paths[0])
    assert code == 2 and "2 --llm and 1 --thresholds" in err
    code, out, err = run_cli(*common, "--llm", judge_llm_dir, "--llm", judge, "--thresholds",
                             paths[0], "--thresholds", paths[1], "--max-context-tokens", "64")
    assert code == 0, err
    report = json.loads((tmp_path / "ab" / "ablation.json").read_text())
    systems = [c["system"] for c in report["costs"]]
    assert systems == ["ensemble@0.8", "ensemble@tuned", "reranked[tiny]@tuned",
                       "reranked[judge]@tuned"]
    assert all(c["llm_calls"] == c["candidates"] > 0 for c in report["costs"][2:])
    assert set(report["curves"]) == {"ensemble (t1 sweep)", *systems[2:]}
    assert (tmp_path / "ab" / "pr.png").exists() and "reranked[judge]@tuned" in out
