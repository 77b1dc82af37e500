"""Scoring a served model: ``clinkd predict --endpoint`` against a loopback OpenAI-compatible server that answers from a
fixture and injects faults, the box conventions, resume after a kill, the API key kept out of every file."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from clinkd.boxes import convert_markup
from clinkd.cli import app
from clinkd.config import ConfigError, load_config
from clinkd.data.medgrit import load_test_split
from clinkd.endpoint import ChatEndpoint, chat_completions_url
from clinkd.engine.served import image_data_url
from clinkd.model.box_convention import PixelBoxes, parse_json_grounding, read_served_answer
from clinkd.testing.loopback import LoopbackChatServer, Reply, completion

ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-test-0123456789-never-written"
KEY_ENV = "CLINKD_TEST_SERVED_KEY"
# Short timeouts and backoffs: the faults cost well under a second each.
FAST = ["predict.endpoint.timeout=2.0", "predict.endpoint.backoff=0.01", "predict.endpoint.retries=3"]
SCORING = ["--meteor", "off", "--spice", "off", "--no-figures", "--json"]


# ---- the box conventions, one answer at a time ----------------------------------------------------------------------
PIXELS = PixelBoxes(28, 56 * 56, 56 * 56)  # any image is resized to 56 × 56


def test_json_grounding_is_read_fenced_listed_bare_or_cut_short():
    fenced = (
        '```json\n[\n  {"bbox_2d": [10, 20, 300, 400], "label": "left kidney"},\n'
        '  {"point_2d": [5, 6], "label": "tip"}\n]\n```'
    )
    assert [(g.label, g.box, g.point) for g in parse_json_grounding(fenced)] == [
        ("left kidney", (10, 20, 300, 400), None),
        ("tip", None, (5, 6)),
    ]
    assert [g.box for g in parse_json_grounding('{"bbox_2d": [1.5, 2, 3, 4]}')] == [(1.5, 2, 3, 4)]
    cut = '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6,'  # max_tokens ran out
    assert [g.label for g in parse_json_grounding(cut)] == ["a"]
    assert parse_json_grounding('{"bbox_2d": [1, 2, 3]} {"bbox_2d": [true, 2, 3, 4]} {"label": "x"}') == []


@pytest.mark.parametrize(
    "boxes, answer, expected, form, scale, ambiguous",
    [
        # Med-GRIT markup on 0–1000 is kept as written.
        (
            "medgrit",
            "It is <ref>liver</ref><box>(100,200),(300,400)</box>.",
            "It is <ref>liver</ref><box>(100,200),(300,400)</box>.",
            "markup",
            "0-1000",
            False,
        ),
        # Qwen3-VL: JSON on 0–1000 becomes the markup of data.box_style, fences and prose dropped; a point is not a box.
        (
            "qwen3-vl",
            'Sure:\n```json\n[{"bbox_2d": [100, 200, 300, 400], "label": "liver"}, {"point_2d": [7, 8]}]\n```',
            "<|object_ref_start|>liver<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|> (7,8)",
            "json",
            "0-1000",
            False,
        ),
        # Qwen2.5-VL: pixels of the 56 × 56 resized image: x = round(x_px · 1000 / 56), clamped (60 px overshoots).
        (
            "qwen2.5-vl",
            '[{"bbox_2d": [7, 14, 28, 60], "label": "liver"}]',
            "<|object_ref_start|>liver<|object_ref_end|><|box_start|>(125,250),(500,1000)<|box_end|>",
            "json",
            "pixels",
            False,
        ),
        (
            "qwen2.5-vl",
            "<ref>liver</ref><box>(7,14),(28,42)</box>",
            "<ref>liver</ref><box>(125,250),(500,750)</box>",
            "markup",
            "pixels",
            False,
        ),
        # auto: beyond the resized image → 0–1000; both fit → 0–1000, ambiguous; no box → as it is.
        ("auto", "<box>(100,200),(300,400)</box>", "<box>(100,200),(300,400)</box>", "markup", "0-1000", False),
        ("auto", '{"bbox_2d": [7, 14, 28, 42]}', "<|box_start|>(7,14),(28,42)<|box_end|>", "json", "0-1000", True),
        ("auto", "Right kidney", "Right kidney", None, None, False),
    ],
)
def test_each_convention_reads_into_med_grit_markup_on_0_1000(boxes, answer, expected, form, scale, ambiguous):
    read = read_served_answer(answer, boxes, "qwen2-vl", (48, 48), PIXELS)
    assert (read.response, read.box_format, read.box_scale, read.ambiguous) == (expected, form, scale, ambiguous)


def test_auto_reads_pixels_only_where_0_1000_cannot_hold_them():
    large = PixelBoxes(28, 1400 * 1400, 1400 * 1400)  # 48 × 48 → 1400 × 1400
    read = read_served_answer("<box>(700,350),(1400,1050)</box>", "auto", "qwen-vl", (48, 48), large)
    assert (read.response, read.box_scale, read.ambiguous) == ("<box>(500,250),(1000,750)</box>", "pixels", False)


# ---- the endpoint client
# ----------------------------------------------------------------------------------------------
def test_the_endpoint_waits_as_told_and_retries_every_transient_fault():
    attempts: Counter = Counter()
    times: dict[str, list[float]] = {}

    def respond(body, headers):
        case = body["messages"][0]["content"]
        attempts[case] += 1
        times.setdefault(case, []).append(time.monotonic())
        first = attempts[case] == 1
        faults = {
            "429": Reply(b"{}", 429, {"Retry-After": "0.3"}),
            "503": Reply(b"{}", 503),
            "garbage": Reply(b"{not json"),
            "drop": Reply(drop=True),
            "slow": Reply(completion("late"), delay=3.0),
            "refusal": None,
            "400": Reply(b"{}", 400),
        }
        if case == "refusal":
            return Reply(completion(None))
        if case == "400" or first and case in faults:
            return faults[case]
        return Reply(completion(f"answer {case}", {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}))

    with LoopbackChatServer(respond) as server:
        endpoint = ChatEndpoint(server.base_url, timeout=1.5, retries=2, backoff=0.001, allow_empty=True)
        replies = {
            case: endpoint.complete({"messages": [{"role": "user", "content": case}]})
            for case in ("ok", "429", "503", "garbage", "drop", "slow", "refusal", "400")
        }
    assert {case: (r.text, r.attempts) for case, r in replies.items()} == {
        "ok": ("answer ok", 1),
        "429": ("answer 429", 2),
        "503": ("answer 503", 2),
        "garbage": ("answer garbage", 2),
        "drop": ("answer drop", 2),
        "slow": ("answer slow", 2),
        "refusal": ("", 1),
        "400": (None, 1),
    }
    assert replies["ok"].usage == {"prompt_tokens": 11, "completion_tokens": 3}
    assert replies["400"].error == "HTTP 400" and endpoint.requests_sent == 13
    assert times["429"][1] - times["429"][0] >= 0.3  # Retry-After, not the 1 ms backoff
    assert "Authorization" not in server.requests[0][1]  # keyless
    assert (
        chat_completions_url("http://h:8000/v1/")
        == "http://h:8000/v1/chat/completions"
        == chat_completions_url("http://h:8000/v1/chat/completions")
    )


# ---- clinkd predict --endpoint against a faulty server
# ----------------------------------------------------------------
def _key(question: str, data_url: str) -> str:
    """A record as the server sees it: its question and its image."""
    return hashlib.sha256(f"{question}\n{data_url}".encode()).hexdigest()[:16]


class FixtureServer(LoopbackChatServer):
    """Answers each record from ``answers`` (by question and image); ``faults[key]`` lists the replies of its first
    attempts."""

    def __init__(
        self, answers: dict[str, str], faults: dict[str, list[Reply]] | None = None, hold_after: int | None = None
    ):
        self.answers, self.faults, self.asked = answers, faults or {}, Counter()
        self.hold_after, self.release = hold_after, threading.Event()
        super().__init__(self.reply)

    def reply(self, body: dict, headers: dict) -> Reply:
        image, text = body["messages"][0]["content"]
        key = _key(text["text"], image["image_url"]["url"])
        with self.lock:
            self.asked[key] += 1
            nth, answered = self.asked[key], sum(self.asked.values())
        if self.hold_after is not None and answered > self.hold_after:
            self.release.wait(60)  # the run is killed while these wait
        scheduled = self.faults.get(key, [])
        if nth <= len(scheduled):
            return scheduled[nth - 1]
        return Reply(completion(self.answers[key], {"prompt_tokens": 100, "completion_tokens": 7}))


def _records(data_dir: Path, pixels: PixelBoxes | None = None) -> dict[str, tuple]:
    """``{key: (task, sample)}`` of every test record, keyed as the server sees it (default box markup qwen2-vl; with
    ``pixels``, the question's boxes in pixels of the resized image)."""
    tests = load_test_split(data_dir, data_dir / "images")

    def question(sample) -> str:
        text = convert_markup(sample.turns[0].question, "qwen2-vl")
        return pixels.to_model(text, (48, 48)) if pixels else text

    return {
        _key(question(sample), image_data_url(sample.image)): (task, sample)
        for task, samples in tests.items()
        for sample in samples
    }


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(out.glob("*.jsonl")) for line in path.read_text().splitlines()]


def _predict(out: Path, data_dir: Path, server: LoopbackChatServer, *args: str):
    return CliRunner().invoke(
        app,
        [
            "predict",
            "--endpoint",
            server.base_url,
            "--served-model",
            "medgemma-test",
            "--out",
            str(out),
            str(ROOT / "configs/default.yaml"),
            f"data.dir={data_dir}",
            *FAST,
            *args,
        ],
    )


def _scores(tmp_path: Path, name: str, pred_dir: Path) -> dict:
    files = [str(path) for path in sorted(pred_dir.glob("*.jsonl"))]
    result = CliRunner().invoke(
        app, ["evaluate", *(arg for path in files for arg in ("--pred", path)), "--out", str(tmp_path / name), *SCORING]
    )
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / name / "metrics.json").read_text())["model"]


def _by_hand(rows: list[dict], responses: dict[str, str], out: Path) -> None:
    """The same records answered ``responses[id]``, written as a plain prediction file per task."""
    out.mkdir()
    for task in ("VG", "ROC", "RC", "MIA"):
        fields = ("id", "image", "task", "modality", "question", "annotation")
        lines = [
            json.dumps({**{key: row[key] for key in fields}, "response": responses[row["id"]]})
            for row in rows
            if row["task"] == task
        ]
        (out / f"{task}.jsonl").write_text("\n".join(lines) + "\n")


def test_every_record_is_answered_once_through_the_faults_and_scores_as_by_hand(small_data, tmp_path, monkeypatch):
    records = _records(small_data)
    # Every third answer is wrong, so the scores are not all 100; the others are the ground truth.
    answers = {
        key: ("a wrong answer <box>(0,0),(10,10)</box>" if i % 3 == 0 else sample.turns[0].answer)
        for i, (key, (task, sample)) in enumerate(records.items())
    }
    keys = list(records)
    faults = {
        keys[0]: [Reply(b'{"error": "slow down"}', 429, {"Retry-After": "0.2"})],
        keys[1]: [Reply(b"{}", 500), Reply(b"{}", 502)],
        keys[2]: [Reply(b"{this is not json")],
        keys[3]: [Reply(drop=True)],
        keys[4]: [Reply(completion("too late"), delay=4.0)],
        keys[5]: [Reply(completion(answers[keys[5]], {"prompt_tokens": 100, "completion_tokens": 7}), delay=0.3)],
    }  # in time
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FixtureServer(answers, faults) as server:
        result = _predict(
            tmp_path / "out", small_data, server, "--concurrency", "4", f"predict.endpoint.api_key_env={KEY_ENV}"
        )
        assert result.exit_code == 0, result.output
        expected_asks = {key: 1 + len(faults.get(key, [])) - (key == keys[5]) for key in records}
        assert dict(server.asked) == expected_asks  # nothing asked twice but what failed
        assert server.max_in_flight <= 4 and {headers["Authorization"] for _, headers in server.requests} == {
            f"Bearer {SECRET}"
        }
        bodies = [body for body, _ in server.requests]
        rerun = _predict(tmp_path / "out", small_data, server, f"predict.endpoint.api_key_env={KEY_ENV}")
        assert rerun.exit_code == 0 and dict(server.asked) == expected_asks  # complete: the rerun asks nothing

    rows = _rows(tmp_path / "out")
    assert Counter(row["id"] for row in rows) == Counter(sample.id for _, sample in records.values())  # each once
    assert all(
        row["response"] == answers[key] == row["raw_response"]
        for key, (_, sample) in records.items()
        for row in rows
        if row["id"] == sample.id and row["question"] == sample.turns[0].question
    )
    max_tokens = load_config().predict.max_new_tokens
    assert {(body["model"], body["temperature"], body["max_tokens"]) for body in bodies} == {
        ("medgemma-test", 0, n) for n in max_tokens.values()
    }
    record = json.loads((tmp_path / "out" / "served.json").read_text())
    first, second = record["invocations"]
    assert (first["answers"], first["requests"], second["answers"], second["requests"]) == (
        32,
        sum(expected_asks.values()),
        0,
        0,
    )
    assert (first["prompt_tokens"], first["completion_tokens"], first["failed"]) == (3200, 224, None) and first[
        "requests_per_s"
    ] > 0
    assert record["rows"]["answers"] == 32 and record["endpoint"]["api_key_env"] == KEY_ENV
    assert not any(SECRET in path.read_text(errors="replace") for path in tmp_path.rglob("*") if path.is_file())
    assert SECRET not in result.output + rerun.output

    _by_hand(rows, {row["id"]: row["raw_response"] for row in rows}, tmp_path / "by-hand")
    assert _scores(tmp_path, "served", tmp_path / "out") == _scores(tmp_path, "by-hand", tmp_path / "by-hand")


@pytest.mark.parametrize("boxes", ["medgrit", "qwen2.5-vl", "qwen3-vl", "auto"])
def test_each_served_convention_scores_as_its_0_1000_answers_written_by_hand(small_data, tmp_path, boxes):
    """VG answered in the convention's own form; pixels are of the 48 px images resized to 56 × 56 (budget 56²). Under
    auto
    the answers are Qwen2.5-VL's pixels, which fit 0–1000 as well: read on 0–1000 and counted ambiguous."""
    from clinkd.boxes import Box

    records = _records(small_data, PIXELS if boxes == "qwen2.5-vl" else None)
    answers, expected = {}, {}
    for key, (task, sample) in records.items():
        truth = sample.turns[0].answer
        if task != "VG":
            answers[key] = expected[sample.id] = truth
            continue
        box = Box.from_text(truth)
        px = [round(v * 56 / 1000) for v in (box.x1, box.y1, box.x2, box.y2)]  # pixels of the resized image
        if boxes == "qwen2.5-vl":  # and back: x = round(x_px · 1000 / 56)
            answers[key] = json.dumps([{"bbox_2d": px, "label": "it"}])
            back = [min(1000, round(v * 1000 / 56)) for v in px]
            expected[sample.id] = f"<ref>it</ref><box>({back[0]},{back[1]}),({back[2]},{back[3]})</box>"
        elif boxes == "auto":
            answers[key] = json.dumps({"bbox_2d": px})
            expected[sample.id] = f"<box>({px[0]},{px[1]}),({px[2]},{px[3]})</box>"
        elif boxes == "qwen3-vl":
            answers[key] = f'```json\n[{{"bbox_2d": [{box.x1:g}, {box.y1:g}, {box.x2:g}, {box.y2:g}]}}]\n```'
            expected[sample.id] = box.to_text("qwen-vl")
        else:
            answers[key] = expected[sample.id] = truth
    budget = ["predict.endpoint.min_pixels=3136", "predict.endpoint.max_pixels=3136"]
    with FixtureServer(answers) as server:
        result = _predict(tmp_path / "out", small_data, server, "--boxes", boxes, *budget)
        assert result.exit_code == 0, result.output
        questions = [body["messages"][0]["content"][1]["text"] for body, _ in server.requests]
    rows = _rows(tmp_path / "out")
    readings = {row["box_scale"] for row in rows if row["task"] == "VG"}
    assert readings == {{"qwen2.5-vl": "pixels"}.get(boxes, "0-1000")}
    assert sum(row["box_ambiguous"] for row in rows) == (8 if boxes == "auto" else 0)  # 56 px boxes fit 0–1000 too
    roc = next(row for row in rows if row["task"] == "ROC")
    sent = convert_markup(roc["question"], "qwen2-vl")
    assert (
        PIXELS.to_model(sent, (48, 48)) if boxes == "qwen2.5-vl" else sent
    ) in questions  # the question's box as the model reads it
    _by_hand(rows, {row["id"]: expected[row["id"]] for row in rows}, tmp_path / "by-hand")
    assert _scores(tmp_path, "served", tmp_path / "out") == _scores(tmp_path, "by-hand", tmp_path / "by-hand")
    if boxes == "auto":
        report = (tmp_path / "served" / "report.md").read_text()
        assert "## Served answers: how their boxes were read" in report and "8 answer(s) fitted both" in report


def test_a_request_that_keeps_failing_stops_the_run_clearly_and_the_rerun_asks_only_it(small_data, tmp_path):
    records = _records(small_data)
    answers = {key: sample.turns[0].answer for key, (_, sample) in records.items()}
    broken = next(key for key, (task, _) in records.items() if task == "RC")
    with FixtureServer(answers, {broken: [Reply(b"{}", 500)] * 3}) as server:
        result = _predict(tmp_path / "out", small_data, server, "predict.endpoint.retries=2")
        assert result.exit_code == 2
        sample = records[broken][1]
        assert f"RC record {sample.id}" in result.output and "failed 3 time(s), last with HTTP 500" in result.output
        assert "rerun the same command" in result.output
        assert len(_rows(tmp_path / "out")) == 31 and server.asked[broken] == 3
        assert json.loads((tmp_path / "out" / "served.json").read_text())["invocations"][0]["failed"].startswith(
            "RC record"
        )
        asked_before = sum(server.asked.values())
        again = _predict(tmp_path / "out", small_data, server)  # the fourth attempt succeeds
        assert again.exit_code == 0, again.output
        assert sum(server.asked.values()) - asked_before == 1 and len(_rows(tmp_path / "out")) == 32


def test_a_killed_run_resumes_asking_only_what_is_missing(small_data, tmp_path):
    records = _records(small_data)
    answers = {key: sample.turns[0].answer for key, (_, sample) in records.items()}
    out = tmp_path / "out"
    with FixtureServer(answers, hold_after=5) as server:
        args = [
            sys.executable,
            "-m",
            "clinkd.cli",
            "predict",
            "--endpoint",
            server.base_url,
            "--served-model",
            "m",
            "--out",
            str(out),
            "--concurrency",
            "2",
            str(ROOT / "configs/default.yaml"),
            f"data.dir={small_data}",
            *FAST,
        ]
        process = subprocess.Popen(
            args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 120
            while len(_rows(out) if out.is_dir() else []) < 5 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(_rows(out)) == 5
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        answered_before = {
            key for key, (_, sample) in records.items() if any(row["id"] == sample.id for row in _rows(out))
        }
        asked_before = Counter(server.asked)
        server.hold_after = None
        server.release.set()
        result = _predict(out, small_data, server)
        assert result.exit_code == 0, result.output
    asked_again = Counter(server.asked) - asked_before
    assert not set(asked_again) & answered_before and set(asked_again) == set(records) - answered_before
    assert Counter(row["id"] for row in _rows(out)) == Counter(sample.id for _, sample in records.values())
    assert [row["index"] for row in _rows(out) if row["task"] == "VG"] == list(range(8))  # rewritten in input order


def test_the_request_carries_the_image_and_the_question_and_the_instruction(small_data, tmp_path):
    records = _records(small_data)
    task, sample = next(value for value in records.values() if value[0] == "VG")
    with LoopbackChatServer(lambda body, headers: Reply(completion("The answer.\nMore on a second line."))) as server:
        result = _predict(
            tmp_path / "out",
            small_data,
            server,
            "data.max_test_per_task=1",
            "predict.endpoint.instructions={VG: 'Answer with <box>(x1,y1),(x2,y2)</box> on 0-1000.'}",
        )
        assert result.exit_code == 0, result.output
        assert "4 of 4 answers span several lines" in " ".join(result.output.split())  # BiRD's clean-up would cut them
        body = next(
            body
            for body, _ in server.requests
            if body["max_tokens"] == 40 and "Answer with" in body["messages"][0]["content"][1]["text"]
        )
    image, text = body["messages"][0]["content"]
    header, data = image["image_url"]["url"].split(",", 1)
    with Image.open(sample.image) as original:
        sent = Image.open(io.BytesIO(base64.b64decode(data)))
        assert header == "data:image/png;base64" and sent.tobytes() == original.convert("RGB").tobytes()
    question = convert_markup(sample.turns[0].question, "qwen2-vl")
    assert text == {"type": "text", "text": f"{question}\nAnswer with <box>(x1,y1),(x2,y2)</box> on 0-1000."}
    assert body["messages"][0]["role"] == "user" and len(body["messages"]) == 1


def test_bad_invocations_are_one_line_errors(small_data, tmp_path, monkeypatch):
    runner, base = CliRunner(), ["predict", "--out", str(tmp_path / "out"), f"data.dir={small_data}"]
    cases = [
        ([], "give --model DIR (a local model) or --endpoint URL"),
        (["--model", str(tmp_path), "--endpoint", "http://127.0.0.1:9/v1", "--served-model", "m"], "not both"),
        (["--endpoint", "http://127.0.0.1:9/v1"], "predict.endpoint: Value error, base_url is set but model is not"),
        (
            ["--endpoint", "http://127.0.0.1:9/v1", "--served-model", "m", "--boxes", "auto"],
            "set min_pixels and max_pixels",
        ),
        (["--endpoint", "http://127.0.0.1:9/v1", "--served-model", "m", "--boxes", "pixels"], "predict.endpoint.boxes"),
        (
            ["--endpoint", "http://127.0.0.1:9/v1", "--served-model", "m", f"predict.endpoint.api_key_env={KEY_ENV}"],
            f"predict.endpoint.api_key_env: environment variable {KEY_ENV} is not set",
        ),
    ]
    monkeypatch.delenv(KEY_ENV, raising=False)
    for args, message in cases:
        result = runner.invoke(app, [*base, *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    with pytest.raises(ConfigError, match="predict.endpoint.instructions: .*unknown task"):
        load_config(overrides=["predict.endpoint.instructions={XY: hi}"])
