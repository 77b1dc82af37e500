"""Reflective correction: similarity, grounding, thresholds, correctors (a real local HTTP server), the stage and
resume."""

from __future__ import annotations

import json
import re
import socket
import sys
from collections import Counter
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from clinkd.boxes import Box, BoxStyle, answer_text
from clinkd.config import ConfigError, load_config
from clinkd.data.records import Sample, Turn, infer_task
from clinkd.endpoint import ChatEndpoint, EndpointFault, parse_reply
from clinkd.reflect.corrections import correct_weak, correction_examples
from clinkd.reflect.correctors import (
    FRAMINGS,
    CorrectionRequest,
    OpenAICorrector,
    TemplateCorrector,
    build_corrector,
    check_correction,
    frame,
    tagged_boxes,
)
from clinkd.reflect.items import ReflectItem, reflect_items, seeded_sample
from clinkd.reflect.report import render_report
from clinkd.reflect.scoring import select_weak
from clinkd.reflect.similarity import (
    EmbeddingSimilarity,
    Judgement,
    LexicalSimilarity,
    SimilarityError,
    build_similarity,
    content_f1,
    grounding,
    judge,
)
from clinkd.testing.loopback import LoopbackChatServer, Reply, completion

LEXICAL = LexicalSimilarity()
VG_GT = "<ref>liver</ref><box>(112,305),(498,702)</box>"


# ---- similarity -----------------------------------------------------------------------------------


def test_answer_text_drops_boxes_and_ref_tags_but_keeps_the_phrase():
    assert answer_text(VG_GT) == "liver"
    assert (
        answer_text("<|object_ref_start|>left kidney<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|><|im_end|>")
        == "left kidney"
    )
    assert answer_text("A cyst <box>(1,2),(3,4)</box> here.") == "A cyst here."


def test_content_f1_exact_values():
    assert content_f1("right kidney", "right kidney") == 1.0
    assert content_f1("left kidney", "right kidney") == 0.5  # P = R = 1/2
    # output {small, cyst}, reference {small, dark, cyst}: P = 1, R = 2/3, F1 = 0.8
    assert content_f1("a small cyst", "a small dark cyst") == pytest.approx(0.8)
    assert content_f1("spleen", "liver") == 0.0
    assert content_f1("", "liver") == 0.0 and content_f1("the", "a") == 1.0  # both empty after neutral words
    assert content_f1("no abnormal finding", "abnormal finding") == pytest.approx(0.8)  # negation is content


def test_lexical_similarity_is_symmetric_bounded_and_order_insensitive():
    rng = np.random.default_rng(0)
    words = "small large dark bright cyst tumor liver kidney left right upper lower region the a in of".split()
    for _ in range(200):
        a = " ".join(rng.choice(words, rng.integers(0, 8)))
        b = " ".join(rng.choice(words, rng.integers(0, 8)))
        score = content_f1(a, b)
        assert 0.0 <= score <= 1.0
        assert score == content_f1(b, a)
        assert content_f1(" ".join(reversed(a.split())), b) == score


class FakeEncoder:
    """Test double for a SentenceTransformer: fixed vectors per text, records what it was asked to encode."""

    VECTORS = {"liver": [1.0, 0.0], "spleen": [0.0, 2.0], "hepatic lobe": [3.0, 3.0], "": [0.0, 0.0]}

    def __init__(self):
        self.seen = []

    def encode(self, sentences, **kwargs):
        self.seen.append(list(sentences))
        return np.array([self.VECTORS[s] for s in sentences])


def test_embedding_similarity_is_the_cosine_of_the_answer_texts():
    encoder = FakeEncoder()
    scores = EmbeddingSimilarity(encoder).scores(
        [VG_GT, "spleen", "hepatic lobe", ""], ["liver", "liver", "liver", "liver"]
    )
    assert scores == pytest.approx([1.0, 0.0, 2**-0.5, 0.0])
    assert encoder.seen == [
        ["liver", "spleen", "hepatic lobe", "", "liver", "liver", "liver", "liver"]
    ]  # one batch, markup removed


def test_embedding_similarity_errors_name_the_key(tmp_path, monkeypatch):
    with pytest.raises(SimilarityError, match="reflect.similarity.path"):
        build_similarity("embedding", None)
    with pytest.raises(SimilarityError, match="reflect.similarity.path"):
        build_similarity("embedding", tmp_path / "missing")
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # as if the optional package were absent
    with pytest.raises(SimilarityError, match=r"pip install 'clinkd\[embedding\]'"):
        build_similarity("embedding", tmp_path)
    assert isinstance(SimilarityError("x"), ConfigError)  # so the CLI prints one red line


@pytest.mark.slow
def test_embedding_similarity_loads_a_real_local_sentence_transformers_checkpoint(tmp_path):
    pytest.importorskip("sentence_transformers")
    import torch
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = "[PAD] [UNK] [CLS] [SEP] liver kidney small dark cyst lower right left region".split()
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(
            vocab_size=len(words),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
        )
    )
    bert.save_pretrained(tmp_path / "hf")
    fast.save_pretrained(tmp_path / "hf")
    SentenceTransformer(str(tmp_path / "hf"), device="cpu", local_files_only=True).save(str(tmp_path / "st"))

    similarity = build_similarity("embedding", tmp_path / "st")
    scores = similarity.scores(["small dark cyst", VG_GT, "left kidney"], ["small dark cyst", "liver", "right kidney"])
    assert scores[0] == pytest.approx(1.0) and scores[1] == pytest.approx(1.0)
    assert -1.0 <= scores[2] < 1.0


# ---- grounding and thresholds ---------------------------------------------------------------------


def test_grounding_needs_every_box_above_the_iou_threshold():
    half = Box(0, 0, 100, 100).iou(Box(0, 0, 100, 50))
    assert half == 0.5
    assert grounding("<box>(0,0),(100,50)</box>", "<box>(0,0),(100,100)</box>") == (False, 0.5)  # strictly above 0.5
    assert grounding("<|box_start|>(0,0),(100,60)<|box_end|>", "<box>(0,0),(100,100)</box>") == (
        True,
        pytest.approx(0.6),
    )
    assert grounding("(0,0),(100,100)", "<box>(0,0),(100,100)</box>") == (
        True,
        1.0,
    )  # bare pair, like the metrics read it
    assert grounding("liver", VG_GT) == (False, 0.0)
    assert grounding("<box>(0,0),(100,100)</box><box>(0,0),(9,9)</box>", "<box>(0,0),(100,100)</box>") == (False, 0.0)
    assert grounding("<box>(5,x),(1,1)</box>", VG_GT) == (False, 0.0)  # unparseable box
    assert grounding("anything", "right kidney") == (None, None)


def test_weak_means_below_threshold_or_wrong_grounding():
    assert not Judgement(0.8, None, None).weak(0.8)  # exactly at the threshold is kept
    assert Judgement(0.7999, None, None).weak(0.8)
    assert Judgement(1.0, False, 0.2).weak(0.8)  # right words, wrong box
    assert not Judgement(0.9, True, 0.7).weak(0.8)
    assert Judgement(0.9, True, 0.6).quality == 0.6 and Judgement(0.5, None, None).quality == 0.5
    [verdict] = judge(
        ["<|object_ref_start|>liver<|object_ref_end|><|box_start|>(600,600),(700,700)<|box_end|>"], [VG_GT], LEXICAL
    )
    assert verdict.similarity == 1.0 and verdict.grounded is False and verdict.weak(0.8)


def test_select_weak_takes_the_worst_first_within_budget():
    rows = [
        {"key": "a", "weak": True, "quality": 0.5},
        {"key": "b", "weak": False, "quality": 0.9},
        {"key": "c", "weak": True, "quality": 0.1},
        {"key": "d", "weak": True, "quality": 0.5},
        {"key": "e", "weak": True, "quality": 0.0},
    ]
    assert [r["key"] for r in select_weak(rows, None, 1)][:2] == ["e", "c"]
    assert [r["key"] for r in select_weak(rows, 2, 1)] == ["e", "c"]
    assert {r["key"] for r in select_weak(rows, None, 1)} == {"a", "c", "d", "e"}
    ties = [{"key": f"k{i}", "weak": True, "quality": 0.0} for i in range(40)]
    first, second = ([r["key"] for r in select_weak(ties, 10, n)] for n in (1, 2))
    assert first == [r["key"] for r in select_weak(ties, 10, 1)]  # reproducible
    assert set(first) != set(second)  # another round reaches other items


def test_seeded_sample_is_deterministic_and_keeps_order():
    values = list(range(100))
    a = seeded_sample(values, 10, seed=3)
    assert a == seeded_sample(values, 10, seed=3) == sorted(a) and len(set(a)) == 10
    assert seeded_sample(values, 10, seed=4) != a
    assert seeded_sample(values, None, 0) == values and seeded_sample(values, 500, 0) == values


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from clinkd.synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, seed=0, images=8, test_per_cell=1, image_size=56)
    return out


def test_infer_task_recovers_every_synthetic_test_task(synth_dir):
    from clinkd.data.medgrit import load_test_split

    tests = load_test_split(synth_dir, synth_dir / "images")
    checked = Counter()
    for task, samples in tests.items():
        for sample in samples:
            assert infer_task(sample.turns[0]) == task, sample.turns[0]
            checked[task] += 1
    assert set(checked) == {"VG", "ROC", "RC", "MIA"}


def test_reflect_items_one_per_turn_with_stable_unique_keys(tmp_path):
    train = [
        Sample(
            "ct_1",
            tmp_path / "a.png",
            "ct",
            [Turn("Where is the <ref>liver</ref>?", VG_GT), Turn("Describe this image.", "CT image.")],
        ),
        Sample("ct_1", tmp_path / "a.png", "ct", [Turn("What is in <box>(1,2),(3,4)</box>?", "liver")]),
    ]
    items = reflect_items(train)
    assert [i.key for i in items] == ["ct_1#0", "ct_1#1", "ct_1#0@2"]
    assert [i.sample.task for i in items] == ["VG", "MIA", "ROC"]
    assert all(len(i.sample.turns) == 1 for i in items)


# ---- acceptance and the template corrector --------------------------------------------------------


def test_check_correction_rejects_anything_that_does_not_keep_the_boxes_exactly():
    ok = "It is <ref>liver</ref><box>(112,305),(498,702)</box>."
    assert check_correction(ok, VG_GT, LEXICAL, 0.8).accepted
    assert check_correction(
        "The <|object_ref_start|>liver<|object_ref_end|> is at <|box_start|>(112,305),(498,702)<|box_end|>",
        VG_GT,
        LEXICAL,
        0.8,
    ).accepted
    cases = {
        "It is the liver.": "boxes differ",  # dropped box
        "It is <ref>liver</ref><box>(112,305),(498,703)</box>.": "boxes differ",  # one coordinate off by one
        "It is <ref>liver</ref> at (112,305),(498,702).": "boxes differ",  # untagged box does not count
        VG_GT + " and <box>(1,1),(2,2)</box>": "boxes differ",  # extra box
        "<ref>liver</ref><box>(112,305),(2000,702)</box>": "malformed box",
        "<ref>spleen</ref><box>(112,305),(498,702)</box>": "meaning check failed",
        VG_GT + "<|im_end|>": "chat control token",
        "   ": "empty reply",
    }
    for reply, reason in cases.items():
        verdict = check_correction(reply, VG_GT, LEXICAL, 0.8)
        assert not verdict.accepted and verdict.reason.startswith(reason), (reply, verdict)


def _random_answer(rng) -> str:
    boxes = []
    for _ in range(int(rng.integers(1, 4))):
        x1, y1 = rng.integers(0, 900, 2)
        x2, y2 = x1 + rng.integers(0, 100), y1 + rng.integers(0, 100)
        boxes.append(
            Box(int(x1), int(y1), int(x2), int(y2)).to_text((BoxStyle.QWEN_VL, BoxStyle.QWEN2_VL)[int(rng.integers(2))])
        )
    return " and ".join(f"<ref>lesion {i}</ref>{box}" for i, box in enumerate(boxes))


def test_template_corrector_keeps_every_box_exactly_and_varies_the_phrasing():
    rng = np.random.default_rng(0)
    corrector = TemplateCorrector()
    phrasings = Counter()
    for index in range(300):
        task = ["VG", "ROC", "RC", "MIA"][index % 4]
        truth = (
            _random_answer(rng)
            if task == "VG"
            else [
                "right kidney",
                "A small dark round cyst in the lower right region.",
                "CT image showing the liver, with no abnormal finding.",
            ][index % 3]
        )
        request = CorrectionRequest(f"k{index}", 1 + index % 2, task, "q", truth, "o")
        [(_, reply)] = list(corrector.correct([request]))
        assert reply.text == corrector.rewrite(request)  # deterministic
        assert tagged_boxes(reply.text) == tagged_boxes(truth)
        assert check_correction(reply.text, truth, LEXICAL, 1.0).accepted, reply.text
        assert reply.text != truth
        [framing] = [f for f in FRAMINGS[task] if frame(f, truth) == reply.text]
        phrasings[(task, framing)] += 1
    assert set(phrasings) == {
        (task, f) for task, framings in FRAMINGS.items() for f in framings
    }  # every framing gets used


# ---- the OpenAI corrector against a real local server ---------------------------------------------

GROUND_TRUTH = {
    "ok": VG_GT,
    "flaky500": "right kidney",
    "slow_once": "A small dark cyst in the lower right region.",
    "garbage_once": "<ref>cyst</ref><box>(10,20),(30,40)</box>",
    "empty_once": "CT image showing the liver.",
    "always500": "left kidney",
    "always_garbage": "spleen",
    "always_empty": "stomach",
    "bad_request": "bladder",
    "drop_box": "<ref>tumor</ref><box>(100,100),(200,200)</box>",
    "alter_box": "<ref>polyp</ref><box>(300,300),(400,400)</box>",
}
SUCCEEDS = {"ok", "flaky500", "slow_once", "garbage_once", "empty_once", "drop_box", "alter_box"}
ACCEPTED = SUCCEEDS - {"drop_box", "alter_box"}
SLOW_S = 6.0
TIMEOUT_S = 2.0  # generous, so that only the deliberately slow reply times out on a loaded machine


class ChatServer(LoopbackChatServer):
    """A chat-completions endpoint on 127.0.0.1 whose behaviour per request is set by ``case <name>`` in the prompt."""

    def __init__(self, delay: float = 0.0):
        self.counts: Counter = Counter()
        self.delay = delay
        super().__init__(self.reply)

    def reply(self, body: dict, headers: dict) -> Reply:
        case = re.search(r"case (\w+)", body["messages"][-1]["content"]).group(1)
        with self.lock:
            self.counts[case] += 1
            nth = self.counts[case]
        truth = GROUND_TRUTH.get(case, "liver")
        reply = Reply(completion(f"It is {truth}"), delay=self.delay)
        if case == "flaky500" and nth == 1 or case in ("always500",):
            reply = Reply(b'{"error": {"message": "boom"}}', 500, delay=self.delay)
        elif case == "bad_request":
            reply = Reply(b'{"error": {"message": "bad request"}}', 400, delay=self.delay)
        elif case == "slow_once" and nth == 1:
            reply = Reply(reply.body, delay=self.delay + SLOW_S)
        elif case == "garbage_once" and nth == 1 or case == "always_garbage":
            reply = Reply(b"{this is not json", delay=self.delay)
        elif case == "empty_once" and nth == 1 or case == "always_empty":
            reply = Reply(completion(""), delay=self.delay)
        elif case == "drop_box":
            reply = Reply(completion("It is the tumor."), delay=self.delay)
        elif case == "alter_box":
            reply = Reply(completion("It is <ref>polyp</ref><box>(300,300),(400,401)</box>."), delay=self.delay)
        return reply


@pytest.fixture()
def chat_server():
    server = ChatServer()
    yield server
    server.close()


def _openai(base_url: str, cache_dir: Path, concurrency: int = 4, timeout: float = 10.0) -> OpenAICorrector:
    endpoint = ChatEndpoint(base_url, "test-key", timeout=timeout, retries=2, backoff=0.01, connections=concurrency)
    return OpenAICorrector(endpoint, model="test", cache_dir=cache_dir, concurrency=concurrency)


def _request(case: str, round_index: int = 1) -> CorrectionRequest:
    return CorrectionRequest(
        f"{case}#0", round_index, "VG", f"case {case}: where is it?", GROUND_TRUTH[case], "wrong answer"
    )


def test_openai_corrector_retries_faults_and_caches_replies(chat_server, tmp_path):
    corrector = _openai(chat_server.base_url, tmp_path / "cache", timeout=TIMEOUT_S)
    replies = {
        request.key.split("#")[0]: reply for request, reply in corrector.correct([_request(c) for c in GROUND_TRUTH])
    }
    assert {case for case, reply in replies.items() if reply.text is not None} == SUCCEEDS
    expected_calls = {
        "ok": 1,
        "flaky500": 2,
        "slow_once": 2,
        "garbage_once": 2,
        "empty_once": 2,
        "drop_box": 1,
        "alter_box": 1,
        "always500": 3,
        "always_garbage": 3,
        "always_empty": 3,
        "bad_request": 1,  # 1 + retries, except a 4xx
    }
    assert dict(chat_server.counts) == expected_calls
    assert corrector.requests_sent == sum(expected_calls.values())
    assert replies["always500"].error == "HTTP 500" and replies["always500"].attempts == 3
    assert replies["always_garbage"].error.startswith("malformed JSON reply")
    assert replies["always_empty"].error == "empty reply"
    assert replies["bad_request"].error == "HTTP 400" and replies["bad_request"].attempts == 1
    assert replies["slow_once"].attempts == 2 and replies["ok"].raw and json.loads(replies["ok"].raw)["choices"]
    verdicts = {case: check_correction(replies[case].text, GROUND_TRUTH[case], LEXICAL, 0.8) for case in SUCCEEDS}
    assert {case for case, v in verdicts.items() if v.accepted} == ACCEPTED
    assert verdicts["drop_box"].reason.startswith("boxes differ") and verdicts["alter_box"].reason.startswith(
        "boxes differ"
    )

    # A rerun (fresh client, same cache dir) sends nothing for the requests that got a reply.
    again = _openai(chat_server.base_url, tmp_path / "cache")
    rerun = {request.key.split("#")[0]: reply for request, reply in again.correct([_request(c) for c in SUCCEEDS])}
    assert all(reply.cached and reply.attempts == 0 for reply in rerun.values())
    assert {case: reply.text for case, reply in rerun.items()} == {case: replies[case].text for case in SUCCEEDS}
    assert again.requests_sent == 0 and dict(chat_server.counts) == expected_calls
    # A different request (next round) is a different cache key.
    list(
        again.correct(
            [
                _request("ok", round_index=2),
                CorrectionRequest("ok#0", 1, "VG", "case ok: where?", VG_GT, "other output"),
            ]
        )
    )
    assert chat_server.counts["ok"] == 2  # round is not in the prompt; the changed output is


def test_openai_corrector_bounds_concurrency(tmp_path):
    server = ChatServer(delay=0.5)
    try:
        corrector = _openai(server.base_url, tmp_path / "cache", concurrency=2, timeout=5)
        requests = [CorrectionRequest(f"k{i}", 1, "ROC", f"case c{i}", "liver", "x") for i in range(6)]
        assert len(list(corrector.correct(requests))) == 6
        assert server.max_in_flight == 2
    finally:
        server.close()


def test_openai_corrector_survives_a_dead_endpoint(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before use: nothing listens there
    corrector = _openai(f"http://127.0.0.1:{port}/v1", tmp_path / "cache")
    [(_, reply)] = list(corrector.correct([_request("ok")]))
    assert reply.text is None and reply.attempts == 3 and reply.error.startswith("connection error")
    assert not any((tmp_path / "cache").rglob("*.json"))  # failures are not cached: a rerun tries again


def test_parse_reply_and_damaged_cache_entries(chat_server, tmp_path):
    assert parse_reply(completion("  It is the liver. ").decode()) == ("It is the liver.", {})
    for bad in ("[1, 2]", '{"choices": []}', '{"choices": null}', completion(None).decode()):
        with pytest.raises(EndpointFault, match="choices|empty"):
            parse_reply(bad)
    corrector = _openai(chat_server.base_url, tmp_path / "cache")
    list(corrector.correct([_request("ok")]))
    [entry] = list((tmp_path / "cache").rglob("*.json"))
    entry.write_text("{torn")
    [(_, reply)] = list(_openai(chat_server.base_url, tmp_path / "cache").correct([_request("ok")]))
    assert reply.text is not None and not reply.cached and chat_server.counts["ok"] == 2


def test_openai_corrector_from_config_reads_the_key_from_the_environment(tmp_path, monkeypatch):
    cfg = load_config(
        overrides=[
            "reflect.corrector=openai",
            "reflect.openai.api_key_env=CLINKD_TEST_KEY",
            "reflect.openai.base_url=http://127.0.0.1:9/v1",
        ]
    )
    monkeypatch.delenv("CLINKD_TEST_KEY", raising=False)
    with pytest.raises(
        ConfigError, match="reflect.openai.api_key_env: environment variable CLINKD_TEST_KEY is not set"
    ):
        build_corrector(cfg.reflect, tmp_path)
    monkeypatch.setenv("CLINKD_TEST_KEY", "secret")
    corrector = build_corrector(cfg.reflect, tmp_path / "cache")
    assert isinstance(corrector, OpenAICorrector) and corrector.cache.root == tmp_path / "cache"
    assert corrector.endpoint.client.headers["Authorization"] == "Bearer secret"
    assert build_corrector(load_config(overrides=["reflect.corrector=none"]).reflect, tmp_path) is None
    request = CorrectionRequest(
        "t0", 1, "ROC", "What is the object in <box>(1,2),(3,4)</box>?", "right kidney", "liver"
    )
    ((_, reply),) = list(
        build_corrector(load_config().reflect, tmp_path).correct([request])
    )  # the default: offline template
    assert reply.error is None and "right kidney" in reply.text


# ---- corrections: provenance, the training mix, resume --------------------------------------------


def _weak_rows(tmp_path, cases):
    items, rows = {}, []
    for case in cases:
        key = f"{case}#0"
        sample = Sample(
            f"ct_{case}",
            tmp_path / f"{case}.png",
            "ct",
            [Turn(f"case {case}: where is it?", GROUND_TRUTH[case])],
            task="VG",
        )
        items[key] = ReflectItem(key, sample)
        rows.append(
            {
                "key": key,
                "id": sample.id,
                "task": "VG",
                "modality": "ct",
                "question": sample.turns[0].question,
                "ground_truth": GROUND_TRUTH[case],
                "output": "wrong answer",
                "similarity": 0.1,
                "grounded": False,
                "min_iou": 0.0,
                "quality": 0.0,
                "weak": True,
            }
        )
    return items, rows


def test_only_validated_corrections_enter_the_training_mix(chat_server, tmp_path):
    items, weak = _weak_rows(tmp_path, GROUND_TRUTH)
    path = tmp_path / "corrections.jsonl"
    records = correct_weak(
        1, weak, items, _openai(chat_server.base_url, tmp_path / "cache", timeout=TIMEOUT_S), LEXICAL, 0.8, path
    )
    status = {row["key"].split("#")[0]: row["status"] for row in records}
    assert {c for c, s in status.items() if s == "accepted"} == ACCEPTED
    assert {c for c, s in status.items() if s == "rejected"} == {"drop_box", "alter_box"}
    assert {c for c, s in status.items() if s == "failed"} == set(GROUND_TRUTH) - SUCCEEDS
    for row in records:  # provenance on every row
        assert row["round"] == 1 and row["corrector"] == "openai" and row["output"] == "wrong answer"
        assert row["similarity"] == 0.1 and row["attempts"] >= 1 and row["image"].endswith(".png")
        assert (row["reason"] == "") == (row["status"] == "accepted")
        assert (row["correction"] is not None) == (row["status"] == "accepted")
        if row["status"] == "rejected":
            assert row["reply_text"] and row["reply_raw"]
    examples = correction_examples(records, items)
    assert len(examples) == len(ACCEPTED)
    for example in examples:
        [turn] = example.turns
        truth = GROUND_TRUTH[re.search(r"case (\w+)", turn.question).group(1)]
        assert tagged_boxes(turn.answer) == tagged_boxes(truth) and "<|im_" not in turn.answer


def test_corrections_resume_after_a_kill_without_duplicates_or_repeated_calls(chat_server, tmp_path):
    cases = ["ok", "flaky500", "garbage_once", "empty_once", "drop_box", "always500"]
    items, weak = _weak_rows(tmp_path, cases)
    path = tmp_path / "corrections.jsonl"
    corrector = _openai(chat_server.base_url, tmp_path / "cache", concurrency=2)

    class KilledAfter:
        name = "openai"

        def __init__(self, inner, n):
            self.inner, self.n = inner, n

        def correct(self, requests):
            with closing(self.inner.correct(requests)) as replies:
                for index, pair in enumerate(replies):
                    if index == self.n:
                        raise KeyboardInterrupt
                    yield pair

    with pytest.raises(KeyboardInterrupt):
        correct_weak(1, weak, items, KilledAfter(corrector, 2), LEXICAL, 0.8, path)
    first = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(first) == 2
    calls_before = Counter(chat_server.counts)

    sent = []

    class Counting:
        name = "openai"

        def correct(self, requests):
            sent.extend(r.key for r in requests)
            return corrector.correct(requests)

    records = correct_weak(1, weak, items, Counting(), LEXICAL, 0.8, path)
    keys = [row["key"] for row in records]
    assert sorted(keys) == sorted(f"{c}#0" for c in cases) and len(set(keys)) == len(keys)
    assert not set(sent) & {row["key"] for row in first}  # finished rows are never sent again
    # Replies that were in flight at the kill came from the cache: only the always-failing case was sent again.
    new_calls = Counter(chat_server.counts) - calls_before
    assert set(new_calls) <= {"always500"} | {c for c in cases if calls_before[c] == 0}
    for case in cases:
        if case != "always500":
            assert chat_server.counts[case] == {"ok": 1, "drop_box": 1}.get(case, 2)  # one success each, ever
    assert correct_weak(1, weak, items, Counting(), LEXICAL, 0.8, path) == records  # a finished round is a no-op


# ---- the stage, end to end on a tiny model --------------------------------------------------------


def _stage_config(tmp_path, synth_dir, **reflect):
    overrides = [
        f"output_dir={tmp_path / 'runs'}",
        f"data.dir={synth_dir}",
        "model.size=xs",
        "model.tokenizer_vocab=400",
        "model.min_pixels=3136",
        "model.max_pixels=3136",
        "train.batch_size=16",
        "train.threads=1",
        "train.save_steps=1",
        "predict.batch_size=16",
        "predict.max_new_tokens={VG: 6, ROC: 4, RC: 6, MIA: 6}",
        "reflect.rounds=2",
        "reflect.generate_samples=12",
        "reflect.budget=5",
        "reflect.lr=1e-3",
    ] + [f"reflect.{key}={value}" for key, value in reflect.items()]
    return load_config(overrides=overrides)


def test_run_reflect_two_rounds_then_resume_after_a_kill(tmp_path, synth_dir, monkeypatch):
    import torch

    from clinkd.engine import generate as generate_module
    from clinkd.recipes import reflect as reflect_module
    from clinkd.recipes.inputs import initial_model, load_dataset

    torch.set_num_threads(1)
    cfg = _stage_config(tmp_path, synth_dir)
    train = load_dataset(cfg).train
    model, processor = initial_model(cfg, train)
    stage = cfg.run_dir / "reflect"

    class Template(TemplateCorrector):
        calls: list = []
        kill_at: int | None = None

        def correct(self, requests):
            for request, reply in super().correct(requests):
                if len(Template.calls) == Template.kill_at:
                    raise KeyboardInterrupt
                Template.calls.append((request.round, request.key))
                yield request, reply

    Template.kill_at = 7  # round 1 sends 5, so the kill comes mid round 2
    with pytest.raises(KeyboardInterrupt):
        reflect_module.run_reflect(cfg, model, processor, train, stage, corrector=Template())
    assert (stage / "round-1" / "summary.json").is_file() and not (stage / "round-2" / "summary.json").is_file()
    assert len((stage / "round-2" / "corrections.jsonl").read_text().splitlines()) == 2

    generated = []
    real_generate = generate_module.generate_responses
    monkeypatch.setattr(
        generate_module, "generate_responses", lambda *a, **k: generated.append(len(a[3])) or real_generate(*a, **k)
    )
    Template.kill_at = None
    calls_before = list(Template.calls)
    fresh, fresh_processor = initial_model(cfg, train)  # a new process would start from the input model again
    result = reflect_module.run_reflect(cfg, fresh, fresh_processor, train, stage, corrector=Template())

    round2 = [json.loads(line) for line in (stage / "round-2" / "corrections.jsonl").read_text().splitlines()]
    assert len({row["key"] for row in round2}) == len(round2) == 5
    assert [key for _, key in Template.calls[len(calls_before) :]] == [row["key"] for row in round2[2:]]
    assert sum(generated) == 12  # round 2's outputs were complete: only the `after` pass generated
    assert [r["round"] for r in result.rounds] == [1, 2] and result.model_dir == stage / "round-2" / "model"
    assert result.rounds[1]["corrections_in_mix"] == 10  # accepted corrections accumulate over rounds
    assert result.rounds[1]["train_examples"] == len(train) * 4 + 10
    assert all(r["steps"] == -(-r["train_examples"] // 16) for r in result.rounds)  # one epoch at batch 16
    for round_dir in ("round-1", "round-2"):
        rows = [json.loads(line) for line in (stage / round_dir / "corrections.jsonl").read_text().splitlines()]
        assert all(row["status"] == "accepted" and row["corrector"] == "template" for row in rows)
        assert all(tagged_boxes(row["correction"]) == tagged_boxes(row["ground_truth"]) for row in rows)
    scores = [json.loads(line) for line in (stage / "round-1" / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 12 and all(set(row) >= {"key", "output", "similarity", "grounded", "weak"} for row in scores)
    report = (stage / "report.md").read_text()
    assert "## Reflective correction" in report and "| round 1 (before) | round 2 | after |" in report
    assert "### Corrections per round and task" in report and "### Scores before and after" in report
    assert result.after is not None and result.after["all"]["n"] == 12

    # Everything finished: a third call does no work at all.
    generated.clear()
    again = reflect_module.run_reflect(cfg, fresh, fresh_processor, train, stage, corrector=Template())
    assert generated == [] and again.rounds == result.rounds


def test_render_report_shows_rounds_tasks_and_before_after():
    scores = {
        "VG": {"n": 2, "similarity": 0.5, "grounded": 0.5, "weak": 1},
        "all": {"n": 2, "similarity": 0.5, "grounded": 0.5, "weak": 1},
    }
    corrections = {
        "VG": {
            "sent": 1,
            "accepted": 0,
            "rejected": 1,
            "failed": 0,
            "reasons": {"boxes differ from the ground truth": 1},
        },
        "all": {"sent": 1, "accepted": 0, "rejected": 1, "failed": 0, "reasons": {}},
    }
    doc = {
        "settings": {
            "corrector": "openai",
            "similarity": "lexical",
            "threshold": 0.8,
            "iou_threshold": 0.5,
            "generated_per_round": 2,
            "budget": 1,
            "accept_threshold": 0.8,
        },
        "rounds": [
            {
                "round": 1,
                "scores": scores,
                "weak": 1,
                "corrections": corrections,
                "train_examples": 10,
                "steps": 1,
                "seconds": 3.0,
            }
        ],
        "after": {
            "VG": {"n": 2, "similarity": 1.0, "grounded": 1.0, "weak": 0},
            "all": {"n": 2, "similarity": 1.0, "grounded": 1.0, "weak": 0},
        },
    }
    report = render_report(doc)
    assert "| 1 | VG | 1 | 1 | 0 | 1 | 0 | boxes differ from the ground truth 1 |" in report
    assert "| VG | 0.500 (50.0%) | 1.000 (100.0%) |" in report
    assert "| round 1 (before) | after |" in report


def test_reflect_config_defaults_and_errors():
    cfg = load_config()
    assert (cfg.reflect.rounds, cfg.reflect.threshold, cfg.reflect.corrector, cfg.reflect.similarity.kind) == (
        2,
        0.8,
        "template",
        "lexical",
    )
    with pytest.raises(ConfigError, match="reflect.bogus: unknown key"):
        load_config(overrides=["reflect.bogus=1"])
    with pytest.raises(ConfigError, match="reflect.corrector"):
        load_config(overrides=["reflect.corrector=gpt"])


def test_cli_reflect_needs_an_existing_model(tmp_path, small_data):
    from typer.testing import CliRunner

    from clinkd.cli import app

    result = CliRunner().invoke(
        app,
        [
            "reflect",
            "--model",
            str(tmp_path / "none"),
            f"data.dir={small_data}",
            "data.synth.enabled=false",
            f"output_dir={tmp_path}",
        ],
    )
    assert result.exit_code == 2 and "does not exist" in " ".join(result.output.split())


def test_docs_show_the_prompt_the_framings_and_the_neutral_words_in_use():
    from clinkd.reflect.correctors import SYSTEM_PROMPT, USER_PROMPT
    from clinkd.reflect.similarity import NEUTRAL_WORDS

    docs = " ".join((Path(__file__).parents[2] / "docs" / "reflect.md").read_text(encoding="utf-8").split())
    assert " ".join(SYSTEM_PROMPT.split()) in docs
    assert all(line.split("{")[0] in docs for line in USER_PROMPT.splitlines())
    assert all(f"`{framing}`" in docs for framings in FRAMINGS.values() for framing in framings)
    assert f"`{' '.join(sorted(NEUTRAL_WORDS))}`" in docs
