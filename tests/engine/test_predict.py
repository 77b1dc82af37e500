import json
from dataclasses import replace

import pytest
from PIL import Image

from clinkd.config import PredictConfig
from clinkd.data.records import PREDICTION_FIELDS, Sample, Turn
from clinkd.data.validation import DataError
from clinkd.engine import generate as generate_module
from clinkd.engine.generate import clean_generation, write_predictions


def _tests(tmp_path, n=5):
    samples = []
    for i in range(n):
        path = tmp_path / f"ct_{i}.png"
        Image.new("RGB", (112, 112), (20 * i, 40, 60)).save(path)
        samples.append(
            Sample(
                f"ct_synth--test--{i:06d}",
                path,
                "ct",
                [Turn("Where is the liver?", "<ref>liver</ref><box>(1,2),(3,4)</box>")],
                task="VG",
            )
        )
    return {"VG": samples}


def test_clean_generation_cuts_at_the_first_stop_marker():
    assert (
        clean_generation("<|box_start|>(1,2),(3,4)<|box_end|><|im_end|><|endoftext|>")
        == "<|box_start|>(1,2),(3,4)<|box_end|>"
    )
    assert clean_generation(" liver <|endoftext|><|endoftext|>") == "liver"


def test_rows_have_the_fixed_schema(tmp_path, tiny_model, tiny_processor):
    paths = write_predictions(
        tiny_model,
        tiny_processor,
        _tests(tmp_path),
        tmp_path / "out",
        PredictConfig(batch_size=2, max_new_tokens={"VG": 4}),
    )
    rows = [json.loads(line) for line in paths["VG"].read_text().splitlines()]
    assert [row["index"] for row in rows] == list(range(5))
    assert all(list(row)[: len(PREDICTION_FIELDS)] == list(PREDICTION_FIELDS) for row in rows)
    assert rows[0]["image"] == "ct_0.png" and rows[0]["modality"] == "ct" and rows[0]["task"] == "VG"


def test_batched_greedy_equals_one_at_a_time(tmp_path, tiny_model, tiny_processor):
    tests = _tests(tmp_path, 4)
    batched = write_predictions(
        tiny_model, tiny_processor, tests, tmp_path / "a", PredictConfig(batch_size=4, max_new_tokens={"VG": 6})
    )
    single = write_predictions(
        tiny_model, tiny_processor, tests, tmp_path / "b", PredictConfig(batch_size=1, max_new_tokens={"VG": 6})
    )

    def responses(path):
        return [json.loads(line)["response"] for line in path.read_text().splitlines()]

    assert responses(batched["VG"]) == responses(single["VG"])


def test_predict_resumes_after_a_crash_without_redoing_rows(tmp_path, tiny_model, tiny_processor, monkeypatch):
    tests = _tests(tmp_path, 5)
    out = tmp_path / "out"
    real = generate_module.generate_responses
    calls = []

    def crash_on_second_batch(model, processor, collator, samples, *args):
        calls.append([s.id for s in samples])
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(model, processor, collator, samples, *args)

    monkeypatch.setattr(generate_module, "generate_responses", crash_on_second_batch)
    with pytest.raises(RuntimeError):
        write_predictions(tiny_model, tiny_processor, tests, out, PredictConfig(batch_size=2, max_new_tokens={"VG": 3}))
    assert len((out / "VG.jsonl").read_text().splitlines()) == 2
    calls.clear()
    monkeypatch.setattr(generate_module, "generate_responses", lambda *a: calls.append(len(a[3])) or real(*a))
    write_predictions(tiny_model, tiny_processor, tests, out, PredictConfig(batch_size=2, max_new_tokens={"VG": 3}))
    rows = [json.loads(line) for line in (out / "VG.jsonl").read_text().splitlines()]
    assert sorted(row["index"] for row in rows) == list(range(5))
    assert calls == [2, 1]  # only the 3 unfinished rows were generated


def test_append_after_a_torn_line_keeps_every_row(tmp_path):
    from clinkd.io import append_jsonl, read_jsonl

    path = tmp_path / "VG.jsonl"
    append_jsonl(path, [{"index": 0}])
    with path.open("a") as handle:
        handle.write('{"index": 1, "resp')  # a crash mid-write
    assert [row["index"] for row in read_jsonl(path)] == [0]
    append_jsonl(path, [{"index": 1}, {"index": 2}])
    assert [row["index"] for row in read_jsonl(path)] == [0, 1, 2]


CONFIG = PredictConfig(batch_size=2, max_new_tokens={"VG": 3})


def test_a_record_fixed_between_runs_is_predicted_once_and_none_twice(
    tmp_path, tiny_model, tiny_processor, monkeypatch
):
    samples = _tests(tmp_path, 5)["VG"]
    out = tmp_path / "out"
    write_predictions(
        tiny_model, tiny_processor, {"VG": samples[:2] + samples[3:]}, out, CONFIG
    )  # record 2 was skipped
    generated = []
    real = generate_module.generate_responses
    monkeypatch.setattr(
        generate_module, "generate_responses", lambda *a: generated.extend(s.id for s in a[3]) or real(*a)
    )
    write_predictions(tiny_model, tiny_processor, {"VG": samples}, out, CONFIG)  # record 2 fixed
    assert generated == [samples[2].id]
    rows = [json.loads(line) for line in (out / "VG.jsonl").read_text().splitlines()]
    assert [(row["index"], row["id"]) for row in rows] == [(index, sample.id) for index, sample in enumerate(samples)]


@pytest.mark.parametrize("change", ["question changed", "answer changed", "record removed"])
def test_a_row_that_answers_no_input_record_stops_the_rerun(tmp_path, tiny_model, tiny_processor, change):
    samples = _tests(tmp_path, 3)["VG"]
    out = tmp_path / "out"
    write_predictions(tiny_model, tiny_processor, {"VG": samples}, out, CONFIG)
    turn = samples[1].turns[0]
    edited = {
        "question changed": [replace(samples[1], turns=[Turn("Where is the spleen?", turn.answer)])],
        "answer changed": [replace(samples[1], turns=[Turn(turn.question, "<ref>liver</ref><box>(5,6),(7,8)</box>")])],
        "record removed": [],
    }[change]
    with pytest.raises(
        DataError, match=rf"VG\.jsonl:2: this row \(id '{samples[1].id}'\) answers no record of the input"
    ):
        write_predictions(tiny_model, tiny_processor, {"VG": [samples[0], *edited, samples[2]]}, out, CONFIG)
