from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch

from prompts import available, load_template
from stage2_rerank import Candidate, load_scorer
from stage2_rerank.backends.hf import prefix_tree
from stage2_rerank.backends.openai_server import OpenAIBackend, ServerError
from stage2_rerank.prompting import PromptBuilder, PromptIds, resolve_answer_ids
from tests.fake_llm_server import FakeServer, fake_logprob
from tests.tiny_llm import byte_bpe_tokenizer, tiny_llama

GOLDEN = Path(__file__).parent / "golden"
TEXT = "El paciente presenta diabetes mellitus y fiebre alta.\r\nRefiere dolor torácico."


def cand(word: str, label: str, text: str = TEXT) -> Candidate:
    return Candidate(text, text.index(word), text.index(word) + len(word), label, "d1", "es")


CANDS = [cand("diabetes mellitus", "DISEASE"), cand("fiebre", "SYMPTOM"),
         cand("dolor torácico", "SYMPTOM"), cand("alta", "DISEASE")]
# a run-away stage-1 span: its prompt is longer than the tiny model's 4,096 positions
_LONG = TEXT + " " + "dolor " * 3000
RUNAWAY = Candidate(_LONG, len(TEXT) + 1, len(_LONG) - 1, "SYMPTOM", "d2")


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("llm") / "tiny")


def test_every_shipped_template_loads_and_defines_the_three_classes():
    for name in available():
        assert set(load_template(name).definitions) == {"DISEASE", "SYMPTOM", "PROCEDURE"}
    with pytest.raises(ValueError, match="unknown prompt template 'nope'"):
        load_template("nope")


@pytest.mark.parametrize("chat", [True, False])
def test_rendered_prompt_is_golden(chat):
    """Any change of a rendered prompt shows here; regenerate the file deliberately."""
    builder = PromptBuilder(byte_bpe_tokenizer(chat=chat))
    golden = GOLDEN / f"rerank_v1_{'chat' if chat else 'plain'}.txt"
    assert builder.render_text(CANDS[1]) == golden.read_bytes().decode("utf-8")


def test_token_ids_are_prefix_plus_suffix_and_prefix_is_shared():
    tok = byte_bpe_tokenizer()
    builder = PromptBuilder(tok)
    prompts = builder.build(CANDS)
    by_label = {}
    for c, p in zip(CANDS, prompts):
        assert tok.decode(p.ids) == builder.render_text(c)
        by_label.setdefault(c.label, set()).add(p.prefix)
    assert all(len(prefixes) == 1 for prefixes in by_label.values())
    assert prompts[0].prefix != prompts[1].prefix  # other class, other definition


def test_what_the_builder_remembers_is_bounded_and_changes_no_prompt():
    tok = byte_bpe_tokenizer()
    notes = [cand("fiebre", "SYMPTOM", f"Nota {i}. " + TEXT) for i in range(12)]
    small, large = PromptBuilder(tok, remember=3), PromptBuilder(tok)
    for _ in range(2):  # the second pass meets notes the small builder has forgotten
        assert small.build(notes) == large.build(notes)
    assert len(small._prefix_cache) == 3 and len(small._blocks) == 3
    assert len(large._prefix_cache) == 12


def test_long_documents_get_a_window_and_keep_the_question():
    tok = byte_bpe_tokenizer()
    long_text = ("Antecedentes sin interés. " * 400) + TEXT + (" Control en un mes." * 400)
    builder = PromptBuilder(tok, max_context_tokens=200)
    c = cand("fiebre", "SYMPTOM", long_text)
    rendered = builder.render_text(c)
    assert "[[fiebre]]" in rendered and rendered.rstrip().endswith("assistant")
    a, b = builder.context_block(long_text, c.start, c.end)
    assert a <= c.start and c.end <= b and f"<<<\n{long_text[a:b]}\n>>>" in rendered
    assert 150 <= len(tok.encode(long_text[a:b])) <= 202
    assert len(tok.encode(long_text)) > 2000


def test_yes_no_resolution_and_its_error():
    yes, no = resolve_answer_ids(byte_bpe_tokenizer())
    assert yes != no
    from tests.tiny_models import wordpiece_tokenizer

    with pytest.raises(ValueError, match=r"no single token for the answer 'yes'; tried"):
        resolve_answer_ids(wordpiece_tokenizer(["nothing to see here"]))


def direct_probability(model_dir: Path, ids: list[int], yes: int, no: int) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    return float(torch.softmax(logits[[yes, no]], dim=-1)[0])


def test_hf_backend_equals_a_direct_transformers_computation(llm_dir):
    scorer = load_scorer("hf", llm_dir)
    got = scorer.score(CANDS)
    prompts = scorer.builder.build(CANDS)
    b = scorer.builder
    want = [direct_probability(llm_dir, p.ids, b.yes_id, b.no_id) for p in prompts]
    assert got == pytest.approx(want, abs=1e-5)
    assert len(set(round(x, 4) for x in got)) > 1  # the tiny model does not answer constantly
    whole = load_scorer("hf", llm_dir, reuse_prefix=False).score(CANDS)
    assert got == pytest.approx(whole, abs=1e-5)
    assert scorer.score([]) == []


def _walk_prefixes(nodes, above=()):
    for node in nodes:
        here = above + node.tokens
        if node.prefix is not None:
            assert here == node.prefix
            yield here
        yield from _walk_prefixes(node.children, here)


def test_prefix_tree_encodes_each_run_of_shared_tokens_once():
    head, other = tuple(range(100, 140)), tuple(range(200, 240))  # 40 tokens each
    prefixes = [head + (1, 2, 3), head + (1, 2, 4), head + (5,), head, other + (9,),
                head + (1, 2, 3), (7, 8)]
    tree = prefix_tree(prefixes, min_shared=4)
    assert sorted(_walk_prefixes(tree)) == sorted(set(prefixes))  # each once
    # the 40 shared tokens are a node of their own, the end of one prefix and the parent of
    # the three that continue it; (1, 2) is too short a run to share at min_shared 4
    node = next(n for n in tree if n.tokens == head)
    assert node.prefix == head
    assert sorted(c.tokens for c in node.children) == [(1, 2, 3), (1, 2, 4), (5,)]
    assert [n.tokens for n in tree if n is not node] == [(7, 8), other + (9,)]
    # a shorter minimum shares (1, 2) as well
    node = next(n for n in prefix_tree(prefixes, min_shared=2) if n.tokens == head)
    assert sorted(c.tokens for c in node.children) == [(1, 2), (5,)]
    # a run shorter than the minimum at the root is not shared
    assert all(n.prefix is not None and not n.children
               for n in prefix_tree(prefixes, min_shared=43))
    with pytest.raises(ValueError, match="at least 1"):
        prefix_tree(prefixes, min_shared=0)


def test_hf_shared_runs_give_the_same_scores_for_fewer_tokens(llm_dir):
    """Windows of several notes and classes: their prefixes share the instructions and the
    class definition, which the tree runs once; the scores are those of whole prompts."""
    texts = [TEXT, "Paciente con fiebre y dolor torácico; se realiza ecocardiografía. " * 3,
             "Diabetes mellitus tipo 2 con fiebre. " * 4]
    cands = [cand(w, label, t) for t in texts for w, label in
             (("fiebre", "SYMPTOM"), ("dolor", "SYMPTOM"), ("diabetes", "DISEASE"),
              ("Diabetes", "DISEASE"), ("ecocardiografía", "PROCEDURE")) if w in t]

    def run(**options):
        scorer = load_scorer("hf", llm_dir, max_context_tokens=24, **options)
        seen = []
        scorer.backend.base.register_forward_pre_hook(
            lambda _, args, kwargs: seen.append(kwargs["input_ids"].numel()), with_kwargs=True)
        return scorer.score(cands), sum(seen), len({p.prefix for p in scorer.builder.build(cands)})

    tree, tree_tokens, prefixes = run()
    flat, flat_tokens, _ = run(min_shared_tokens=0)
    whole, whole_tokens, _ = run(reuse_prefix=False)
    assert prefixes >= 6  # several windows and classes
    assert tree == pytest.approx(whole, abs=1e-5) and flat == pytest.approx(whole, abs=1e-5)
    assert tree_tokens < 0.7 * flat_tokens < 0.7 * whole_tokens
    with pytest.raises(ValueError, match="min_shared_tokens"):
        load_scorer("hf", llm_dir, min_shared_tokens=-1)


def test_cache_hits_invalidation_and_corrupt_entries(llm_dir, tmp_path):
    scorer = load_scorer("hf", llm_dir, cache_dir=tmp_path)
    first = scorer.score(CANDS)
    assert scorer.calls == 4
    assert scorer.score(CANDS) == first and scorer.calls == 4  # all hits
    db = sqlite3.connect(tmp_path / "scores.sqlite")
    db.execute("UPDATE scores SET score = 7.5 WHERE rowid = 1")
    db.commit()
    assert scorer.score(CANDS) == pytest.approx(first) and scorer.calls == 5
    other = load_scorer("hf", llm_dir, cache_dir=tmp_path, max_context_tokens=64)
    other.score(CANDS[:1])
    assert other.calls == 1  # other prompts settings: other keys


def test_scores_are_cached_chunk_by_chunk_so_a_crash_keeps_them(llm_dir, tmp_path):
    scorer = load_scorer("hf", llm_dir, cache_dir=tmp_path)
    scorer.chunk_size = 2
    real, asked = scorer.backend.score_prompts, []

    def dies_on_the_second_chunk(prompts, yes, no):
        asked.append(len(prompts))
        if len(asked) == 2:
            raise RuntimeError("the machine went away")
        return real(prompts, yes, no)

    scorer.backend.score_prompts = dies_on_the_second_chunk
    with pytest.raises(RuntimeError, match="went away"):
        scorer.score(CANDS)
    assert asked == [2, 2] and len(scorer.cache) == 2  # the first chunk's scores are kept
    again = load_scorer("hf", llm_dir, cache_dir=tmp_path)
    progress = []
    again.on_progress = lambda done, total: progress.append((done, total))
    scores = again.score(CANDS)
    assert again.calls == 2 and progress == [(2, 2)]  # only what the crash lost
    assert scores == pytest.approx(load_scorer("hf", llm_dir).score(CANDS), abs=1e-6)


@pytest.mark.parametrize("bad, message", [
    (Candidate("fiebre", 3, 99, "SYMPTOM"), r"candidate 1: span 3-99 is empty or outside"),
    (Candidate("fiebre", 0, 6, "MEDICATION"), r"candidate 1: unknown label 'MEDICATION'"),
    (Candidate("a  b", 1, 3, "SYMPTOM"), r"candidate 1: the mention at 1-3 is only whitespace"),
    (Candidate("fiebre", 2, 2, "SYMPTOM"), r"candidate 1: span 2-2 is empty"),
])
def test_bad_candidates_are_clear_errors_and_nothing_is_cached(llm_dir, tmp_path, bad, message):
    scorer = load_scorer("hf", llm_dir, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=message):
        scorer.score([CANDS[0], bad])
    assert len(scorer.cache) == 0 and scorer.calls == 0


def test_prompts_longer_than_the_model_takes_are_not_sent_and_score_zero(llm_dir, tmp_path,
                                                                       caplog):
    scorer = load_scorer("hf", llm_dir, cache_dir=tmp_path)
    assert scorer.backend.max_prompt_tokens == 4096  # the tiny model's positions
    batch = [CANDS[0], RUNAWAY, CANDS[1]]
    lengths = [len(p.ids) for p in scorer.builder.build(batch)]
    assert lengths[1] > 4096 > max(lengths[0], lengths[2])
    sent = []
    real = scorer.backend.score_prompts
    scorer.backend.score_prompts = lambda ps, y, n: sent.append(len(ps)) or real(ps, y, n)
    with caplog.at_level("WARNING"):
        scores = scorer.score(batch)
    assert sent == [2] and scorer.calls == 2 and scorer.too_long == 1 and scorer.skipped == [1]
    assert scores[1] == 0.0
    assert scores[::2] == pytest.approx(load_scorer("hf", llm_dir).score(batch[::2]), abs=1e-6)
    assert "document 'd2', SYMPTOM at" in caplog.text and "score 0" in caplog.text
    assert len(scorer.cache) == 2  # a score the model did not give is not cached
    # a context that does not fit even without a mention is a setting to change
    scorer.backend.max_prompt_tokens = lengths[0] - 10
    with pytest.raises(ValueError, match="lower max_context_tokens"):
        scorer.score(CANDS[:1])


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_scorer("hf", tmp_path / "no-model")


PROMPTS = [PromptIds((1, 2, 3), (4, i)) for i in range(10)]


def expected(prompts):
    import math

    return [1 / (1 + math.exp(-1.0 - fake_logprob(p.ids))) for p in prompts]


def test_openai_backend_round_robin_over_replicas():
    a, b = FakeServer(), FakeServer()
    try:
        backend = OpenAIBackend("m", urls=[a.url, b.url], batch_size=2, concurrency=4)
        assert backend.score_prompts(PROMPTS, 5, 6) == pytest.approx(expected(PROMPTS))
        assert a.requests > 0 and b.requests > 0 and a.requests + b.requests == 5
        assert backend.score_prompts([], 5, 6) == []
    finally:
        a.close()
        b.close()


def test_openai_backend_times_out_retries_and_survives_a_dying_replica():
    slow, dying, good = FakeServer(delay=1.0), FakeServer(die_after=1), FakeServer()
    try:
        backend = OpenAIBackend("m", urls=[slow.url], timeout=0.2, retries=2, backoff=0.01)
        with pytest.raises(ServerError, match="no LLM server answered after 2 tries"):
            backend.score_prompts(PROMPTS[:2], 5, 6)
        backend = OpenAIBackend("m", urls=[dying.url, good.url], batch_size=2, concurrency=1,
                                backoff=0.01)
        assert backend.score_prompts(PROMPTS, 5, 6) == pytest.approx(expected(PROMPTS))
        assert dying.requests >= 2  # it answered once, then failed and the other took over
    finally:
        for s in (slow, dying, good):
            s.close()


def test_openai_backend_learns_the_context_length_from_the_servers():
    listed = [{"id": "other", "max_model_len": 99}, {"id": "m", "max_model_len": 2048}]
    a, b = FakeServer(models=listed), FakeServer(models=[{"id": "m", "max_model_len": 4096}])
    bare = FakeServer()  # lists nothing (404), as a server that is not vLLM may
    try:
        assert OpenAIBackend("m", urls=[a.url, b.url]).max_prompt_tokens == 2047
        assert OpenAIBackend("m", urls=[bare.url, b.url]).max_prompt_tokens == 4095
        assert OpenAIBackend("m", urls=[bare.url]).max_prompt_tokens is None
        assert OpenAIBackend("m", urls=[bare.url], max_prompt_tokens=100).max_prompt_tokens == 100
        before, backend = a.gets, OpenAIBackend("m", urls=[a.url])
        assert backend.max_prompt_tokens == backend.max_prompt_tokens == 2047
        assert a.gets == before + 1  # asked once
    finally:
        for s in (a, b, bare):
            s.close()


def test_openai_backend_refused_url_is_a_clear_error():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    backend = OpenAIBackend("m", urls=[f"http://127.0.0.1:{port}"], retries=2, backoff=0.01)
    with pytest.raises(ServerError, match=rf"127.0.0.1:{port}.*(refused|Errno)"):
        backend.score_prompts(PROMPTS[:1], 5, 6)


def _write_scores(path: str, start: int) -> None:
    from stage2_rerank.cache import ScoreCache

    cache = ScoreCache(Path(path))
    for i in range(start, start + 200, 10):
        cache.put_many("m", [(f"k{j}", (j % 100) / 100) for j in range(i, i + 10)])


def test_a_cache_file_that_cannot_be_opened_is_named(tmp_path):
    import re
    import sqlite3

    from stage2_rerank.cache import ScoreCache

    (tmp_path / "scores.sqlite").mkdir()  # where the database file belongs
    where = re.escape(str(tmp_path / "scores.sqlite"))
    with pytest.raises(sqlite3.OperationalError, match=rf"^{where}: unable to open database file$"):
        ScoreCache(tmp_path / "scores.sqlite")


def test_cache_is_safe_when_two_processes_write(tmp_path):
    import multiprocessing

    from stage2_rerank.cache import ScoreCache

    path = str(tmp_path / "scores.sqlite")
    ScoreCache(Path(path)).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_scores, args=(path, start)) for start in (0, 100)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = ScoreCache(Path(path))
    assert len(cache) == 300
    assert cache.get_many("m", ["k0", "k150", "k299"]) == [0.0, 0.5, 0.99]


@pytest.mark.parametrize("settings", [{}, {"template": "rerank_v1", "max_context_tokens": 48}])
def test_identity_known_without_loading_the_model(tiny_llm_dir, settings):
    """A driver that leaves the LLM to its workers records the identity they will have."""
    from stage2_rerank.scorer import scorer_identity

    assert scorer_identity("hf", tiny_llm_dir, **settings) == \
        load_scorer("hf", tiny_llm_dir, **settings).identity
    with pytest.raises(ValueError, match="needs the vllm backend"):
        scorer_identity("hf", tiny_llm_dir, lora=True)
