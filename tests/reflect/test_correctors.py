"""The correctors: what a correction must keep, the template corrector, the OpenAI corrector against a real local
HTTP server (faults, retries, cache, concurrency), and the corrections that enter the training mix (provenance,
resume)."""

from __future__ import annotations

import json
import re
import socket
from collections import Counter
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from clinkd.boxes import Box, BoxStyle
from clinkd.config import ConfigError, load_config
from clinkd.data.records import Sample, Turn
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
from clinkd.reflect.items import ReflectItem
from clinkd.reflect.similarity import (
    LexicalSimilarity,
)
from clinkd.testing.loopback import LoopbackChatServer, Reply, completion

from conftest import VG_ANSWER  # the ground truth of one VG answer

LEXICAL = LexicalSimilarity()



# ---- acceptance and the template corrector --------------------------------------------------------


def test_check_correction_rejects_anything_that_does_not_keep_the_boxes_exactly():
    ok = "It is <ref>liver</ref><box>(112,305),(498,702)</box>."
    assert check_correction(ok, VG_ANSWER, LEXICAL, 0.8).accepted
    assert check_correction(
        "The <|object_ref_start|>liver<|object_ref_end|> is at <|box_start|>(112,305),(498,702)<|box_end|>",
        VG_ANSWER,
        LEXICAL,
        0.8,
    ).accepted
    cases = {
        "It is the liver.": "boxes differ",  # dropped box
        "It is <ref>liver</ref><box>(112,305),(498,703)</box>.": "boxes differ",  # one coordinate off by one
        "It is <ref>liver</ref> at (112,305),(498,702).": "boxes differ",  # untagged box does not count
        VG_ANSWER + " and <box>(1,1),(2,2)</box>": "boxes differ",  # extra box
        "<ref>liver</ref><box>(112,305),(2000,702)</box>": "malformed box",
        "<ref>spleen</ref><box>(112,305),(498,702)</box>": "meaning check failed",
        VG_ANSWER + "<|im_end|>": "chat control token",
        "   ": "empty reply",
    }
    for reply, reason in cases.items():
        verdict = check_correction(reply, VG_ANSWER, LEXICAL, 0.8)
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
    "ok": VG_ANSWER,
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
                CorrectionRequest("ok#0", 1, "VG", "case ok: where?", VG_ANSWER, "other output"),
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
