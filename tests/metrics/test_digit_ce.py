"""clinkd.metrics.digits (per-coordinate, per-digit-place CE of boxes) and benchmarks/digit_ce.py."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from clinkd.boxes import parse_boxes
from clinkd.data.medgrit import load_test_split, write_medgrit
from clinkd.data.records import Sample, Turn
from clinkd.metrics.digits import COORDINATES, UNIFORM_DIGIT_CE, CoordinateDigit, DigitCE, coordinate_digits
from clinkd.synth import generate

from conftest import VG_ANSWER, VG_QUESTION, load_benchmark  # the overfitted model's one question and answer

NOT_A_DIGIT_CE = 100.0  # any non-digit token's CE; it must never reach a mean


def qwen2_split(text: str) -> list[str]:
    """Hand-made tokens as Qwen2 splits them: special tokens whole, every digit alone, other runs in between."""
    return re.findall(r"<\|\w+\|>|\d|[^\d<]+|<", text)


def digit_valued_ce(tokens: list[str]) -> list[float]:
    """Each digit token's CE is its own value, so every expected mean below is a plain average of digits."""
    return [float(token) if token.isdigit() else NOT_A_DIGIT_CE for token in tokens]


def read(text: str, masked: set[int] = frozenset()) -> DigitCE:
    tokens = qwen2_split(text)
    digits = DigitCE()
    digits.add(tokens, [index not in masked for index in range(len(tokens))], digit_valued_ce(tokens))
    return digits


def test_qwen2_vl_box_three_digit_coordinates():
    result = read(
        "<|object_ref_start|>liver<|object_ref_end|><|box_start|>(112,305),(498,702)<|box_end|><|im_end|>"
    ).as_dict()
    assert result == {
        "ce": {"x1": [1.0, 1.0, 2.0], "y1": [3.0, 0.0, 5.0], "x2": [4.0, 9.0, 8.0], "y2": [7.0, 0.0, 2.0]},
        "count": {c: [1, 1, 1] for c in COORDINATES},
        "first_digit": (1 + 3 + 4 + 7) / 4,
    }


def test_qwen_vl_box_short_numbers_and_1000_are_placed_from_the_left():
    tokens = qwen2_split("<ref>x</ref><box>(7,1000),(45,0)</box>")
    assert coordinate_digits(tokens) == [
        CoordinateDigit(0, "x1", 1, tokens.index("7")),
        CoordinateDigit(0, "y1", 1, tokens.index("1")),
        CoordinateDigit(0, "y1", 2, tokens.index("1") + 1),
        CoordinateDigit(0, "y1", 3, tokens.index("1") + 2),  # 1000's last 0 is in no place
        CoordinateDigit(0, "x2", 1, tokens.index("4")),
        CoordinateDigit(0, "x2", 2, tokens.index("5")),
        CoordinateDigit(0, "y2", 1, len(tokens) - 4),
    ]
    result = read("<ref>x</ref><box>(7,1000),(45,0)</box>").as_dict()
    assert result["ce"] == {
        "x1": [7.0, None, None],
        "y1": [1.0, 0.0, 0.0],
        "x2": [4.0, 5.0, None],
        "y2": [0.0, None, None],
    }
    assert result["count"] == {"x1": [1, 0, 0], "y1": [1, 1, 1], "x2": [1, 1, 0], "y2": [1, 0, 0]}


def test_two_boxes_in_either_markup_are_numbered_in_text_order_and_averaged():
    text = "<ref>a</ref><box>(300,105),(600,902)</box> and <|box_start|>(112,305),(498,702)<|box_end|>"
    assert [(d.box, d.coordinate) for d in coordinate_digits(qwen2_split(text)) if d.place == 1] == [
        (0, "x1"),
        (0, "y1"),
        (0, "x2"),
        (0, "y2"),
        (1, "x1"),
        (1, "y1"),
        (1, "x2"),
        (1, "y2"),
    ]
    result = read(text).as_dict()
    assert result["ce"]["x1"] == [2.0, 0.5, 1.0]  # (3+1)/2, (0+1)/2, (0+2)/2
    assert result["count"] == {c: [2, 2, 2] for c in COORDINATES}


def test_masked_tokens_are_ignored():
    text = "Is <|box_start|>(900,900),(900,900)<|box_end|> it?<|im_end|><|box_start|>(112,305),(498,702)<|box_end|>"
    tokens = qwen2_split(text)
    answer = tokens.index("<|im_end|>") + 1
    x1_second_digit = answer + 3  # <|box_start|>, (, 1, 1
    digits = read(text, masked=set(range(answer)) | {x1_second_digit})
    assert digits.as_dict()["ce"]["x1"] == [1.0, None, 2.0]
    assert digits.as_dict()["count"]["y1"] == [1, 1, 1]
    assert digits.first_digit() == (1 + 3 + 4 + 7) / 4


def test_a_token_holding_several_digits_is_refused():
    with pytest.raises(ValueError, match="one digit per token"):
        coordinate_digits(["<|box_start|>", "(", "11", "2", ",", "3", "),(", "4", ",", "7", ")", "<|box_end|>"])


def test_no_boxes_means_no_numbers():
    digits = read("A large bright round tumor.<|im_end|>")
    assert math.isnan(digits.first_digit())
    assert digits.as_dict()["first_digit"] is None


# ---- the script, on the tiny model overfitted to one VG answer (conftest.trained_checkpoint) ----
@pytest.fixture(scope="module")
def digit_ce():
    return load_benchmark("digit_ce")


@pytest.fixture()
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices on a shared machine
    yield
    torch.set_num_threads(threads)


def expected_counts(answers: list[str]) -> dict[str, list[int]]:
    """Digits per (coordinate, place) of the answers' boxes, counted from the box values, not the tokens."""
    counts = {c: [0, 0, 0] for c in COORDINATES}
    for box in (box for answer in answers for box in parse_boxes(answer)):
        for coordinate in COORDINATES:
            for place in range(min(3, len(str(int(getattr(box, coordinate)))))):
                counts[coordinate][place] += 1
    return counts


def test_script_reads_every_answer_digit_with_and_without_the_image(
    digit_ce, trained_checkpoint, tmp_path, one_thread, capsys
):
    generate(tmp_path / "synth", seed=0, images=8, test_per_cell=1, image_size=48)
    answers = [sample.turns[0].answer for sample in load_test_split(tmp_path / "synth", tasks=["VG"])["VG"]]
    out = tmp_path / "digits.json"
    rows = digit_ce.main(
        [
            "--model",
            str(trained_checkpoint),
            "--data",
            str(tmp_path / "synth"),
            "--blind",
            "--json",
            str(out),
            "--batch-size",
            "4",
        ]
    )
    assert [row["model"] for row in rows] == [str(trained_checkpoint), f"{trained_checkpoint} (blind)"]
    assert all(row["records"] == len(answers) and row["count"] == expected_counts(answers) for row in rows)
    pairs = [(mean, count) for row in rows for c in COORDINATES for mean, count in zip(row["ce"][c], row["count"][c])]
    assert all((mean is None) == (count == 0) for mean, count in pairs)
    assert json.loads(out.read_text()) == rows
    assert "ln 10 = 2.303" in capsys.readouterr().out


@pytest.fixture()
def own_question(overfit_image, tmp_path) -> Path:
    """A Med-GRIT folder whose one VG record is the overfitted model's own question, image and answer."""
    (tmp_path / "own" / "images").mkdir(parents=True)
    image = shutil.copy(overfit_image, tmp_path / "own" / "images" / overfit_image.name)
    sample = Sample(overfit_image.stem, Path(image), "ct", [Turn(VG_QUESTION, VG_ANSWER)])
    write_medgrit([sample], tmp_path / "own" / "test_VG.json")
    return tmp_path / "own"


def test_overfitted_model_knows_the_first_digits_of_its_own_answer(
    digit_ce, trained_checkpoint, own_question, one_thread
):
    [row] = digit_ce.main(["--model", str(trained_checkpoint), "--data", str(own_question)])
    assert row["count"] == {c: [1, 1, 1] for c in COORDINATES}  # (112,305),(498,702)
    assert row["first_digit"] < UNIFORM_DIGIT_CE


def test_checkpoints_are_read_in_step_order_with_the_stage_processor(
    digit_ce, trained_checkpoint, own_question, tmp_path, one_thread
):
    stage = tmp_path / "stage"
    shutil.copytree(trained_checkpoint, stage / "model")
    for step in (10, 2):  # Trainer checkpoints hold weights only, no processor
        (stage / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copy(trained_checkpoint / name, stage / "checkpoints" / f"checkpoint-{step}" / name)
    rows = digit_ce.main(["--model", str(trained_checkpoint), "--checkpoints", str(stage), "--data", str(own_question)])
    assert [row["model"] for row in rows] == [str(trained_checkpoint), "step 2", "step 10"]
    assert rows[0]["ce"] == rows[1]["ce"] == rows[2]["ce"]  # the same weights, read the same way


@pytest.fixture(scope="module")
def learning_curve():
    return load_benchmark("learning_curve")


def test_the_learning_curve_scores_what_the_model_answers_greedily(
    learning_curve, trained_checkpoint, own_question, tmp_path, one_thread
):
    out = tmp_path / "curve.json"
    [row] = learning_curve.main(
        ["--model", str(trained_checkpoint), "--data", str(own_question), "--blind", "--json", str(out)]
    )
    # The overfitted model repeats its one answer to its own question: the asked name, a hit, its centre inside.
    assert {key: row[key] for key in ("records", "names_asked", "recall", "centre_in")} == {
        "records": 1,
        "names_asked": 1.0,
        "recall": 1.0,
        "centre_in": 1.0,
    }
    assert row["first_digit"] < row["first_digit_blind"] and json.loads(out.read_text()) == [row]


def test_answer_scores_count_names_hits_and_centres(learning_curve):
    def vg(phrase, box):
        return Sample(
            "ct_0",
            Path("x.png"),
            "ct",
            [Turn(f"Where is the <ref>{phrase}</ref>?", f"<ref>{phrase}</ref><box>{box}</box>")],
        )

    samples = [vg("liver", "(100,100),(500,500)")] * 3 + [vg("cyst", "(0,0),(100,100)")]
    answers = [
        "<ref>liver</ref><box>(110,100),(500,480)</box>",  # named, a hit
        "<ref>spleen</ref><box>(200,200),(300,300)</box>",  # another name; centre inside, no hit
        "<ref>liver</ref><box>(600,600),(700,700)</box>",  # named, missed
        "<ref>cyst</ref> nowhere",
    ]  # named, no box
    assert learning_curve.answer_scores(samples, answers) == {"names_asked": 0.75, "recall": 0.25, "centre_in": 0.5}
