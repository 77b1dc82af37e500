import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from clinkd.data.records import MODALITIES, MODALITY_NAMES, TASKS, Prediction, Sample, Turn
from clinkd.io import append_jsonl
from clinkd.metrics.baselines import CENTRE_BOX, baseline_predictions
from clinkd.metrics.captions import (
    bleu,
    cider_d,
    lcs_length,
    metric_backends,
    register_caption_scorer,
    registered_caption_scorers,
    rouge_l,
    rouge_l_caption,
    unregister_caption_scorer,
)
from clinkd.metrics.cleanup import clean_response, extract_information, strip_chat_tokens
from clinkd.metrics.fidelity import has_parseable_box, modality_classes, names_asked, question_fidelity
from clinkd.metrics.protocol import score_predictions
from clinkd.metrics.report import render_comparison, render_markdown
from clinkd.metrics.rules import bird_iou, box_strings, classification_correct, corners, score_grounding
from clinkd.metrics.tokenize import ptb_tokenize
from clinkd.recipes.evaluate import run_evaluate

from conftest import caption_corpus


def prediction(task, modality, annotation, response, index=0):
    record_id = f"{modality}_{index:03d}--test"
    return Prediction(record_id, record_id + ".png", task, modality, "q", annotation, response, {"index": index})


# ---- clean-up -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Lesion.<|im_end|>\nmore", "Lesion."),  # rule 1: cut at '.<|im_end|>', keep the period
        ("Lesion<|im_end|>\n<|endoftext|>", "Lesion"),  # rule 2 then rule 4
        ("Answer:\nLesion\nmore\nlines", "Lesion"),  # rule 3: only the text between the first two newlines
        ("Lesion<|endoftext|><|endoftext|>", "Lesion"),  # rule 4 (BiRD's own example)
        ("  Lesion  ", "Lesion"),
        ("Lesion<|im_end|>", "Lesion<|im_end|>"),  # a bare trailing <|im_end|> survives in BiRD
    ],
)
def test_extract_information_follows_birds_rules_one_by_one(raw, expected):
    assert extract_information(raw) == expected
    assert clean_response(raw, bird_exact=True) == expected


def test_the_clinkd_pre_step_cuts_at_the_end_of_turn_and_keeps_birds_newline_rule():
    assert clean_response("Lesion<|im_end|>") == "Lesion"
    assert clean_response("Lesion<|im_end|>\n<|im_start|>user\nWhat?") == "Lesion"
    assert (
        clean_response("Lesion<|im_end|>\n<|im_start|>user\nWhat?", bird_exact=True) == "Lesion<|im_start|>user\nWhat?"
    )
    assert strip_chat_tokens("\nLesion\nmore<|endoftext|>") == "\nLesion\nmore"
    assert (
        clean_response("\nLesion\nmore<|im_end|>")
        == "Lesion"
        == clean_response("\nLesion\nmore<|im_end|>", bird_exact=True)
    )


# ---- VG -----------------------------------------------------------------------------------------
def test_iou_has_no_plus_one_and_exactly_half_is_a_miss():
    assert bird_iou((0, 0, 100, 100), (0, 0, 100, 50)) == 0.5
    assert bird_iou((0, 0, 100, 100), (0, 0, 100, 51)) == pytest.approx(0.51)
    assert bird_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert bird_iou((100, 100, 0, 0), (0, 0, 100, 100)) == 0.0  # inverted corners never overlap
    assert score_grounding("<box>(0,0),(100,50)</box>", "<box>(0,0),(100,100)</box>").hits == 0
    assert score_grounding("<box>(0,0),(100,51)</box>", "<box>(0,0),(100,100)</box>").hits == 1


def test_several_gt_boxes_and_one_prediction_serving_two():
    two = "<box>(0,0),(100,100)</box> and <box>(500,500),(600,600)</box>"
    outcome = score_grounding(two, "<box>(0,0),(100,100)</box>")
    assert (outcome.gt_boxes, outcome.hits) == (2, 1)
    overlapping = "<box>(0,0),(100,100)</box><box>(0,0),(100,90)</box>"  # IoU 1.0 and 0.9 with the prediction
    assert score_grounding(overlapping, "<box>(0,0),(100,100)</box>").hits == 2
    extra = "<box>(700,700),(800,800)</box><box>(0,0),(100,100)</box><box>(1,1),(2,2)</box>"
    assert score_grounding("<box>(0,0),(100,100)</box>", extra).hits == 1  # extra predictions cost nothing


def test_box_formats_and_the_integer_fallback():
    gt = "<box>(0,0),(100,100)</box>"
    qwen2 = "<|box_start|>(0,0),(100,100)<|box_end|>"
    assert score_grounding(gt, qwen2).hits == 1
    assert score_grounding(gt, qwen2, bird_exact=True).hits == 1  # via BiRD's bare integer fallback
    decimal = "<|box_start|>(0,0),(100.0,100)<|box_end|>"
    assert score_grounding(gt, decimal).hits == 1
    assert score_grounding(gt, decimal, bird_exact=True).predicted == 0  # the fallback takes integers only
    assert score_grounding(gt, "It is at (0,0),(100,100).").hits == 1
    assert score_grounding(gt, "It is at (0, 0), (100, 100).").predicted == 0  # no spaces in the fallback
    # A tagged box switches the fallback off, even when the bare pair would hit.
    assert score_grounding(gt, "<box>(500,500),(600,600)</box> or (0,0),(100,100)").hits == 0
    # Qwen2-VL ground truth is read too (BiRD reads <box> only: the sample has no GT there).
    assert score_grounding(qwen2, gt).gt_boxes == 1
    assert score_grounding(qwen2, gt, bird_exact=True).gt_boxes == 0


def test_box_contents_parse_like_bird():
    assert corners("(1, 2), (3, 4)") == (1.0, 2.0, 3.0, 4.0)
    assert corners("1,2,3,4") == (1.0, 2.0, 3.0, 4.0)
    assert corners("(1,2),(3)") is None
    assert corners("(1,2),(3,4),(5,6)") is None
    assert corners("") is None
    assert corners("(nan,0),(1,1)") is None
    assert corners("(0,0),(1005,1200)") == (0.0, 0.0, 1005.0, 1200.0)  # no range check
    assert box_strings("<box>a</box><|box_start|>b<|box_end|>") == ["a", "b"]
    assert box_strings("<box>a</box><|box_start|>b<|box_end|>", bird_exact=True) == ["a"]
    outcome = score_grounding("<box>(0,0),(100,100)</box>", "<box>(1,2),(3)</box>")
    assert (outcome.predicted, outcome.malformed, outcome.hits) == (1, 1, 0)
    with pytest.raises(ValueError, match="ground-truth box"):
        score_grounding("<box>(0,0),(x,1)</box>", "")


def test_vg_recall_is_per_gt_box_and_macro_over_8_with_empty_modalities_at_zero():
    rows = [
        prediction(
            "VG", "ct", "<box>(0,0),(100,100)</box><box>(500,500),(600,600)</box>", "<box>(0,0),(100,100)</box>", 0
        ),
        prediction("VG", "ct", "<box>(0,0),(100,100)</box>", "no box at all", 1),  # unparseable: adds 1 to N
        prediction("VG", "ct", "There is no liver.", "<box>(0,0),(100,100)</box>", 2),  # no GT: skipped
        prediction("VG", "mr", "<box>(0,0),(100,100)</box>", "<|box_start|>(0,0),(100,100)<|box_end|><|im_end|>", 3),
        prediction("VG", "pet", "<box>(0,0),(100,100)</box>", "", 4),
    ]
    vg = score_predictions(rows)["tasks"]["VG"]
    assert vg["per_modality"]["ct"]["Recall@0.5"] == pytest.approx(1 / 3)
    assert vg["per_modality"]["mr"]["Recall@0.5"] == pytest.approx(1.0)
    assert vg["per_modality"]["pet"]["Recall@0.5"] == 0.0
    assert vg["macro"]["Recall@0.5"] == pytest.approx((1 / 3 + 1) / 8)
    assert vg["macro_present"]["Recall@0.5"] == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert vg["empty_modalities"] == ["x", "endoscopy", "dermoscopy", "fundus", "ultrasound"]
    assert vg["headline"] == {"metric": "Recall@0.5", "value": vg["macro"]["Recall@0.5"]}
    counts = vg["counts"]
    assert counts["samples"]["ct"] == 3 and counts["samples"]["all"] == 5
    assert counts["gt_boxes"]["ct"] == 3 and counts["hits"]["ct"] == 1
    assert counts["skipped_no_gt"]["ct"] == 1
    assert counts["unparseable"]["ct"] == 1 and counts["unparseable"]["pet"] == 1 and counts["unparseable"]["all"] == 2
    assert counts["empty_responses"]["pet"] == 1 and counts["empty_responses"]["all"] == 1


def test_the_one_hundred_millionth_denominator_guard_is_birds():
    vg = score_predictions([prediction("VG", "ct", "<box>(0,0),(10,10)</box>", "<box>(0,0),(10,10)</box>")])["tasks"][
        "VG"
    ]
    assert vg["per_modality"]["ct"]["Recall@0.5"] == 1 / (1 + 1e-8)


# ---- ROC ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("annotation", "response", "correct"),
    [
        ("Lung", "The lungs", True),  # substring, case-insensitive
        ("right kidney", "kidney, right", True),  # order ignored, punctuation in the response is fine
        ("right kidney", "the kidney", False),  # every token is needed
        ("lesion.", "lesion", False),  # punctuation stays attached to the annotation's token
        ("Optic disc", "This is the optic disc of the eye", True),
    ],
)
def test_roc_needs_every_annotation_token_as_a_substring(annotation, response, correct):
    assert classification_correct(annotation, response) is correct


def test_roc_accuracy_per_modality_and_macro():
    rows = [
        prediction("ROC", "ct", "liver", "Liver<|im_end|>", 0),
        prediction("ROC", "ct", "spleen", "liver", 1),
        prediction("RO", "fundus", "optic disc", "disc, optic", 2),  # BiRD's task tag is accepted
    ]
    roc = score_predictions(rows)["tasks"]["ROC"]
    assert roc["per_modality"]["ct"]["Recall"] == pytest.approx(0.5)
    assert roc["per_modality"]["fundus"]["Recall"] == pytest.approx(1.0)
    assert roc["macro"]["Recall"] == pytest.approx(1.5 / 8)
    assert roc["counts"]["correct"]["all"] == 2


def test_unknown_modality_or_task_names_the_row():
    with pytest.raises(ValueError, match="brain_1"):
        score_predictions([Prediction("brain_1", "brain_1.png", "VG", "brain", "q", "a", "r")])
    with pytest.raises(ValueError, match="ct_1"):
        score_predictions([Prediction("ct_1", "ct_1.png", "XX", "ct", "q", "a", "r")])


# ---- tokenisation -------------------------------------------------------------------------------
# Expected outputs are those of pycocoevalcap's Java PTBTokenizer (CoreNLP 3.4.1) on the same text.
TOKENISED = {
    "The liver (left lobe) shows a 3.5 cm lesion.": "the liver -lrb- left lobe -rrb- shows a 3.5 cm lesion",
    "Don't worry; it's the patient's right kidney!": "do n't worry it 's the patient 's right kidney",
    'CT image: "a bright, round tumor" -- located at [upper-left] {region}.': (
        "ct image a bright round tumor located at -lsb- upper-left -rsb- -lcb- region -rcb-"
    ),
    "Size 5x5mm, 10% of area, e.g. U.S. patients... cannot won't": (
        "size 5x5mm 10 % of area e.g. u.s. patients can not wo n't"
    ),
    "It's 2.5mm/3mm & T1-weighted; a/b test? yes! $100": "it 's 2.5 mm/3mm & t1-weighted a/b test yes $ 100",
    "<ref>liver</ref><box>(112,305),(498,702)</box>": "<ref> liver </ref> <box> -lrb- 112,305 -rrb- -lrb- 498,702 "
                                                      "-rrb- </box>",
    "lesion.<|im_end|>": "lesion < | im_end | >",
    "Masses, nodules, etc. Lesions etc. are seen. Dr. Who vs. Fig. 3a": "masses nodules etc. lesions etc. are seen dr. "
                                                                        "who vs. fig. 3a",
    "-5 --5 - 5 5- -a a- a--b E?! A... B..": "-5 5 5 5 a a a b e ?! a. b.",
    "Café naïve — en–dash ½": "café naïve en dash 1/2",
    "...": "",
    "": "",
    "Right kidney": "right kidney",
}


@pytest.mark.parametrize("text", TOKENISED)
def test_ptb_tokenize_matches_the_java_tokenizer_on_known_cases(text):
    assert ptb_tokenize(text) == TOKENISED[text]


@pytest.mark.skipif(shutil.which("java") is None, reason="no Java for pycocoevalcap's PTBTokenizer")
def test_ptb_tokenize_agrees_with_pycocoevalcaps_java_tokenizer():
    tokenizer_module = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    from clinkd.synth.generate import draw, plan

    texts = list(TOKENISED) + [
        turn.answer for job in plan(40, 1) for turn in draw(job, 0, 64)[1] if "<box>" not in turn.answer
    ]
    java = tokenizer_module.PTBTokenizer().tokenize({i: [{"caption": text}] for i, text in enumerate(texts)})
    assert [ptb_tokenize(text) for text in texts] == [java[i][0] for i in range(len(texts))]


# ---- caption metrics ----------------------------------------------------------------------------
def test_bleu_hand_computed():
    b1, b2, b3, b4 = bleu(["the cat sat on the mat"], [["the cat is on the mat"]])
    # matches 5/6 unigrams, 3/5 bigrams, 1/4 trigrams, 0/3 4-grams; equal lengths (BP ≈ 1)
    assert b1 == pytest.approx(5 / 6, rel=1e-9)
    assert b2 == pytest.approx(math.sqrt(5 / 6 * 3 / 5), rel=1e-9)
    assert b3 == pytest.approx(0.5, rel=1e-9)
    assert b4 == pytest.approx((0.125 * 1e-15 / (3 + 1e-9)) ** 0.25, rel=1e-6)  # the tiny/small constants
    short = bleu(["the cat"], [["the cat is on the mat"]])  # brevity penalty exp(1 - 6/2)
    assert short[0] == pytest.approx(math.exp(1 - 6 / 2), rel=1e-6)
    assert bleu([""], [["a b"]]) == [0.0, 0.0, 0.0, 0.0]
    # closest reference length, ties to the shorter: |3-2| == |3-4| → 2, so no brevity penalty
    assert bleu(["a b c"], [["a b", "a b c d"]])[0] == pytest.approx(1.0, rel=1e-9)


def test_rouge_l_hand_computed():
    assert lcs_length("a b c d".split(), "a c".split()) == 2
    assert rouge_l_caption("the cat sat on the mat", ["the cat is on the mat"]) == pytest.approx(5 / 6)
    # P = 1/2, R = 1: F = (1 + 1.2²)·P·R / (R + 1.2²·P)
    assert rouge_l_caption("a b c d", ["a c"]) == pytest.approx(2.44 * 0.5 / (1 + 1.44 * 0.5))
    assert rouge_l_caption("a b", ["x y", "b"]) == pytest.approx(2.44 * 0.5 / (1 + 1.44 * 0.5))  # best P and R
    assert rouge_l_caption("", ["a b"]) == 0.0
    assert rouge_l_caption("", [""]) == 1.0  # pycocoevalcap's split(" ") quirk
    assert rouge_l(["a", "b"], [["a"], ["c"]]) == pytest.approx(0.5)


def test_cider_d_hand_computed():
    assert cider_d(["a b"], [["a b"]]) == 0.0  # one caption: every IDF is log(1) - log(1) = 0
    # Two disjoint captions, each its own reference: IDF log 2 everywhere, cosine 1 for every n that exists.
    assert cider_d(["a b c d e", "f g h i j"], [["a b c d e"], ["f g h i j"]]) == pytest.approx(10.0)
    assert cider_d(["a b c", "d e f"], [["a b c"], ["d e f"]]) == pytest.approx(7.5)  # no 4-grams: mean of 1,1,1,0
    assert cider_d(["", "d e f"], [["a b c"], ["d e f"]]) == pytest.approx(7.5 / 2)
    assert cider_d(["a", "b"], [[""], [""]]) == 0.0  # pycocoevalcap raises here


def random_corpus(seed: int, size: int) -> tuple[list[str], list[list[str]]]:
    return caption_corpus(seed, size, empty_references=True)


def test_caption_metrics_equal_pycocoevalcap_on_random_corpora():
    bleu_module = pytest.importorskip("pycocoevalcap.bleu.bleu")
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    for seed, size in ((0, 240), (1, 3), (2, 17)):
        candidates, references = random_corpus(seed, size)
        gts = dict(enumerate(references))
        res = {i: [c] for i, c in enumerate(candidates)}
        expected_bleu, _ = bleu_module.Bleu(4).compute_score(gts, res, verbose=0)
        assert bleu(candidates, references) == pytest.approx(expected_bleu, rel=1e-12, abs=1e-300)
        assert rouge_l(candidates, references) == pytest.approx(Rouge().compute_score(gts, res)[0], rel=1e-12)
        assert cider_d(candidates, references) == pytest.approx(Cider().compute_score(gts, res)[0], rel=1e-12)


def caption_rows(task, n_per_modality=6, modalities=("ct", "mr"), seed=3):
    candidates, references = random_corpus(seed, n_per_modality * len(modalities))
    rows = []
    for i, modality in enumerate(m for m in modalities for _ in range(n_per_modality)):
        rows.append(prediction(task, modality, references[i][0].capitalize() + ".", candidates[i] + "<|im_end|>", i))
    return rows


def test_caption_task_is_per_modality_corpus_scoring_rounded_like_bird():
    from pycocoevalcap.cider.cider import Cider

    rows = caption_rows("RC")
    rc = score_predictions(rows)["tasks"]["RC"]
    ct = [row for row in rows if row.modality == "ct"]
    gts = {i: [ptb_tokenize(row.annotation)] for i, row in enumerate(ct)}
    res = {i: [ptb_tokenize(clean_response(row.response))] for i, row in enumerate(ct)}
    assert rc["per_modality"]["ct"]["CIDEr"] == round(Cider().compute_score(gts, res)[0], 6)
    assert rc["metrics"] == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"]
    assert rc["empty_modalities"] == ["x", "pet", "endoscopy", "dermoscopy", "fundus", "ultrasound"]
    assert rc["per_modality"]["pet"] == dict.fromkeys(rc["metrics"], 0.0)
    ct_mr = rc["per_modality"]["ct"]["ROUGE_L"] + rc["per_modality"]["mr"]["ROUGE_L"]
    assert rc["macro"]["ROUGE_L"] == round(ct_mr / 8, 6)
    assert rc["macro_present"]["ROUGE_L"] == round(ct_mr / 2, 6)
    assert rc["headline"]["metric"] == "ROUGE_L"  # SPICE's stand-in until a SPICE backend exists
    assert [item["metric"] for item in rc["summary"]] == ["ROUGE_L", "Bleu_4", "CIDEr"]


def test_mia_reports_mbr_and_mbmr_only_with_a_meteor_backend():
    mia = score_predictions(caption_rows("MIA"))["tasks"]["MIA"]
    parts = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L")
    assert mia["macro"]["mBR"] == pytest.approx(sum(mia["macro"][p] for p in parts) / 5)
    assert "mBMR" not in mia["macro"] and mia["headline"]["metric"] == "mBR"

    @dataclass(frozen=True)
    class FakeMeteor:
        metrics: tuple = ("METEOR",)
        backend: str = "fake METEOR"

        def score(self, candidates, references):
            return {"METEOR": 0.25}

    meteor = FakeMeteor()
    register_caption_scorer(meteor)
    try:
        with pytest.raises(ValueError, match="already has the backend"):
            register_caption_scorer(FakeMeteor(backend="another"))
        result = score_predictions(caption_rows("MIA"))
    finally:
        unregister_caption_scorer(meteor)
    mia = result["tasks"]["MIA"]
    assert mia["metrics"][:6] == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L"]
    assert mia["macro"]["METEOR"] == pytest.approx(0.25 * 2 / 8)
    expected = (sum(mia["macro"][p] for p in parts) + mia["macro"]["METEOR"]) / 6
    assert mia["macro"]["mBMR"] == pytest.approx(expected)
    assert mia["headline"]["metric"] == "mBMR"
    assert result["backends"]["METEOR"] == "fake METEOR"
    assert "METEOR" not in metric_backends(registered_caption_scorers())


def test_a_replacing_backend_owns_its_metrics():
    @dataclass(frozen=True)
    class ConstantCider:
        metrics: tuple = ("CIDEr",)
        backend: str = "constant"

        def score(self, candidates, references):
            return {"CIDEr": 1.5}

    constant = ConstantCider()
    register_caption_scorer(constant, replace=True)
    try:
        rc = score_predictions(caption_rows("RC"))
    finally:
        unregister_caption_scorer(constant)
    assert rc["tasks"]["RC"]["per_modality"]["ct"]["CIDEr"] == 1.5
    assert rc["backends"]["CIDEr"] == "constant"


# ---- whole protocol, baselines, report ----------------------------------------------------------
def make_samples():
    """Per modality: one VG row, three ROC rows (liver, kidney, kidney), one RC and one MIA row."""
    region = "What is in <box>(1,1),(5,5)</box>?"
    turns = [
        ("", "VG", Turn("Where is <ref>liver</ref>?", "<ref>liver</ref><box>(300,300),(700,700)</box>")),
        ("r", "ROC", Turn(region, "liver")),
        ("s", "ROC", Turn(region, "kidney")),
        ("t", "ROC", Turn(region, "kidney")),
        ("c", "RC", Turn("Describe <box>(1,1),(5,5)</box>.", "A small round cyst in the upper left region.")),
        ("m", "MIA", Turn("What does it show?", "CT image of the abdomen.")),
    ]
    samples = []
    for index, modality in enumerate(MODALITIES):
        image = Path(f"{modality}_{index}.png")
        samples += [
            Sample(f"{modality}_{index}{suffix}", image, modality, [turn], task=task) for suffix, task, turn in turns
        ]
    return samples


def training_records(samples):
    """The test samples' turns as training records: one multi-turn record per modality, without a task."""
    records = {}
    for sample in samples:
        records.setdefault(sample.modality, Sample(f"{sample.modality}_train", sample.image, sample.modality, []))
        records[sample.modality].turns.append(sample.turns[0])
    return list(records.values())


def test_baselines_answer_only_their_own_tasks():
    samples = make_samples()
    baselines = baseline_predictions(samples, training_records(samples))
    assert {name: sorted({row.task for row in rows}) for name, rows in baselines.items()} == {
        "centre box": ["VG"],
        "name prior box": ["VG"],
        "majority class": ["ROC"],
        "most frequent answer": ["MIA", "RC"],
    }
    assert {row.response for row in baselines["centre box"]} == {"<box>(250,250),(750,750)</box>"}
    assert {row.response for row in baselines["name prior box"]} == {"<box>(300,300),(700,700)</box>"}
    assert {row.response for row in baselines["majority class"]} == {"kidney"}
    scores = {name: score_predictions(rows) for name, rows in baselines.items()}
    # (250,250)-(750,750) vs (300,300)-(700,700): IoU = 400² / 500² = 0.64
    assert bird_iou((250, 250, 750, 750), (300, 300, 700, 700)) == pytest.approx(0.64)
    assert scores["centre box"]["tasks"]["VG"]["macro"]["Recall@0.5"] == pytest.approx(1.0)
    assert scores["majority class"]["tasks"]["ROC"]["macro"]["Recall"] == pytest.approx(2 / 3)
    assert set(scores["most frequent answer"]["tasks"]) == {"RC", "MIA"}
    assert CENTRE_BOX.area == 250_000
    assert set(baseline_predictions(samples)) == {"centre box"}  # nothing to fit the others on


def test_baselines_are_fitted_on_the_training_turns_never_on_the_test_labels():
    region = "What is in <box>(1,1),(5,5)</box>?"
    tests = [
        Sample(
            "ct_0",
            Path("ct_0.png"),
            "ct",
            [Turn("Where is <ref>liver</ref>?", "<ref>liver</ref><box>(0,0),(50,50)</box>")],
            task="VG",
        ),
        Sample("ct_1", Path("ct_1.png"), "ct", [Turn(region, "cyst")], task="ROC"),
        Sample("ct_2", Path("ct_2.png"), "ct", [Turn(region, "cyst")], task="ROC"),
    ]
    train = [
        Sample(
            "ct_t",
            Path("ct_t.png"),
            "ct",
            [
                Turn("Where is <ref>liver</ref>?", "<ref>liver</ref><box>(500,500),(900,900)</box>"),
                Turn(region, "kidney"),
                Turn("Describe <box>(1,1),(5,5)</box>.", "A small round cyst in the left region."),  # RC, not a class
            ],
        )
    ]
    baselines = baseline_predictions(tests, train)
    assert [row.response for row in baselines["name prior box"]] == ["<box>(500,500),(900,900)</box>"]
    assert [row.response for row in baselines["majority class"]] == ["kidney", "kidney"]
    assert score_predictions(baselines["majority class"])["tasks"]["ROC"]["macro"]["Recall"] == 0.0


def test_name_prior_box_is_the_median_training_box_per_modality_and_phrase():
    def vg(phrase, box):
        answer = f"<ref>{phrase}</ref><box>{box}</box>" if box else "no box here"
        return Turn(f"Where is <ref>{phrase}</ref>?", answer)

    train = [
        Sample(
            "ct_t",
            Path("x.png"),
            "ct",
            [
                vg("liver", "(100,200),(300,600)"),
                vg("liver", "(120,100),(500,500)"),
                vg("liver", "(900,0),(1000,400)"),
                vg("cyst", "(10,10),(20,21)"),
                vg("cyst", "(30,30),(40,40)"),  # even count: the mean of the two middle values, rounded
            ],
        ),
        Sample("mr_t", Path("x.png"), "mr", [vg("liver", "(0,0),(10,10)")]),  # another modality: its own prior
        Sample("x_t", Path("x.png"), "x", [Turn("What does it show?", "A chest.")]),  # no VG turn in x
    ]

    def test(index, modality, phrase):
        return Sample(f"{modality}_{index}", Path("x.png"), modality, [vg(phrase, "(1,1),(2,2)")], task="VG")

    tests = [
        test(0, "ct", "liver"),
        test(1, "ct", "cyst"),
        test(2, "mr", "liver"),
        test(3, "ct", "tumor"),
        test(4, "x", "heart"),
    ]
    answers = [row.response for row in baseline_predictions(tests, train)["name prior box"]]
    assert answers == [
        "<box>(120,100),(500,500)</box>",
        "<box>(20,20),(30,30)</box>",  # medians 20, 20, 30, 30.5 → 30 (round half to even)
        "<box>(0,0),(10,10)</box>",
        "<box>(100,30),(300,400)</box>",  # a name never asked in training: its modality's median VG box
        "<box>(250,250),(750,750)</box>",  # a modality without VG training turns: the centre box
    ]


def test_majority_ties_go_to_the_first_answer_and_a_sample_without_task_is_refused():
    image = Path("ct_1.png")
    region = "What is in <box>(1,1),(5,5)</box>?"
    train = [Sample("ct_t", image, "ct", [Turn(region, answer) for answer in ["b", "a", "a", "b"]])]
    tests = [Sample("ct_1", image, "ct", [Turn(region, "a")], task="ROC")]
    assert {row.response for row in baseline_predictions(tests, train)["majority class"]} == {"b"}
    with pytest.raises(ValueError, match="ct_9"):
        baseline_predictions([Sample("ct_9", image, "ct", [Turn("q", "a")])])


def test_report_shows_all_tasks_and_modalities_and_flags_missing_ones():
    metrics = score_predictions([prediction("VG", "ct", "<box>(0,0),(10,10)</box>", "<box>(0,0),(10,10)</box>")])
    json.dumps(metrics)
    report = render_markdown(metrics, "tiny run")
    assert report.startswith("# tiny run")
    for task in TASKS:
        assert f"| {task} |" in report
    for modality in MODALITIES:
        assert MODALITY_NAMES[modality] in report
    vg_row = next(line for line in report.splitlines() if line.startswith("| VG | Recall@0.5 |"))
    assert vg_row.split(" | ")[2:5] == ["100.00", "–", "–"]  # CT scored, MR and X-ray empty
    assert "| ROC | – |" in report and "unparseable" in report


def test_full_report_and_comparison_with_baselines():
    samples = make_samples()
    model = [prediction(s.task, s.modality, s.turns[0].answer, s.turns[0].answer, i) for i, s in enumerate(samples)]
    metrics = score_predictions(model)
    assert metrics["overall"]["value"] == pytest.approx(
        sum(metrics["tasks"][t]["headline"]["value"] for t in TASKS) / 4
    )
    report = render_markdown(metrics, "all tasks")
    assert report.count("| 100.00 | 100.00 | 100.00 | 100.00 | 100.00 | 100.00 | 100.00 | 100.00 |") >= 4
    baselines = {
        name: score_predictions(rows) for name, rows in baseline_predictions(samples, training_records(samples)).items()
    }
    table = render_comparison({"model": metrics, **baselines})
    lines = table.splitlines()
    assert lines[0] == "|  | VG (Recall@0.5) | ROC (Recall) | RC (ROUGE_L) | MIA (mBR) | Average |"
    centre = next(line for line in lines if line.startswith("| centre box |"))
    assert centre.split(" | ")[2:] == ["–", "–", "–", "– |"]
    assert next(line for line in lines if line.startswith("| model |")).split(" | ")[1] == "100.00"


def test_bird_exact_mode_is_recorded_and_changes_only_what_it_should():
    rows = [prediction("ROC", "ct", "lesion", "Lesion<|im_end|>")]
    assert score_predictions(rows, bird_exact=True)["protocol"]["bird_exact"] is True
    vg = [prediction("VG", "ct", "<box>(0,0),(10,10)</box>", "<|box_start|>(0,0),(10.0,10)<|box_end|>")]
    assert score_predictions(vg)["tasks"]["VG"]["macro"]["Recall@0.5"] > 0
    assert score_predictions(vg, bird_exact=True)["tasks"]["VG"]["counts"]["unparseable"]["all"] == 1


def test_run_evaluate_writes_metrics_and_report(tmp_path):
    samples = make_samples()
    path = tmp_path / "pred.jsonl"
    append_jsonl(path, [Prediction.for_sample(s.task, s, "kidney").to_json() for s in samples])
    tests = {task: [s for s in samples if s.task == task] for task in TASKS}
    document = run_evaluate([path], tmp_path / "out", tests=tests, train=training_records(samples), label="model")
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written == json.loads(json.dumps(document))
    assert set(written["baselines"]) == {"centre box", "name prior box", "majority class", "most frequent answer"}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Model vs comparisons and trivial baselines" in report and "| majority class |" in report


# ---- question fidelity ----------------------------------------------------------------------------
def test_names_asked_reads_the_ref_or_else_the_words():
    question = "Please locate the <ref>left lung</ref>."
    assert names_asked(question, "<|object_ref_start|>Left  Lung<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>")
    assert not names_asked(question, "<ref>heart</ref><box>(1,2),(3,4)</box>")
    assert names_asked(question, "The left lung is at <box>(1,2),(3,4)</box>.")  # no ref: the phrase in its words
    assert not names_asked(question, "The lung is at <box>(1,2),(3,4)</box>.")
    assert names_asked("Where is the lesion?", "<box>(1,2),(3,4)</box>") is None  # nothing asked by name
    assert has_parseable_box("<|box_start|>(1,2),(3,4)<|box_end|>") and not has_parseable_box("<box>(5,2),(3,4)</box>")


def test_question_fidelity_counts_each_share_over_the_answers_it_applies_to():
    ask = "Where is the <ref>liver</ref>?"

    def row(task, modality, question, response):
        return Prediction(
            f"{modality}_{task}_{len(response)}", "x.png", task, modality, question, "gt", response + "<|im_end|>"
        )

    rows = [
        row("VG", "ct", ask, "<ref>liver</ref><box>(1,2),(30,40)</box>"),
        row("VG", "ct", ask, "<ref>spleen</ref><box>(1,2),(30,40)</box>"),
        row("VG", "ct", ask, "<ref>liver</ref> somewhere"),
        row("VG", "ct", "Where is the lesion?", "<box>(1,2),(30,40)</box>"),
        row("ROC", "ct", "What is in <box>(1,1),(5,5)</box>?", "Liver"),
        row("ROC", "ct", "What is in <box>(1,1),(5,5)</box>?", "left lung"),  # an X-ray class, not a CT one
        row("RC", "ct", "Describe <box>(1,1),(5,5)</box>.", "A liver."),
    ]
    train = [
        Sample("ct_t", Path("x.png"), "ct", [Turn("What is in <box>(1,1),(5,5)</box>?", "liver")]),
        Sample("x_t", Path("x.png"), "x", [Turn("What is in <box>(1,1),(5,5)</box>?", "left lung")]),
    ]
    classes = modality_classes(train)
    assert classes == {"ct": {"liver"}, "x": {"left lung"}}
    assert question_fidelity(rows, classes) == {
        "names_asked": {"value": 2 / 3, "n": 3},
        "parseable_box": {"value": 3 / 4, "n": 4},
        "modality_class": {"value": 1 / 2, "n": 2},
    }
    assert question_fidelity(rows, {})["modality_class"] == {"value": None, "n": 0}  # no training split: unknown


def test_run_evaluate_reports_question_fidelity_per_row(tmp_path):
    samples = make_samples()
    path = tmp_path / "pred.jsonl"
    append_jsonl(path, [Prediction.for_sample(s.task, s, s.turns[0].answer).to_json() for s in samples])
    tests = {task: [s for s in samples if s.task == task] for task in TASKS}
    document = run_evaluate(
        [path],
        tmp_path / "out",
        tests=tests,
        train=training_records(samples),
        label="model",
        others={"teacher": [path]},
        figures=False,
    )
    assert set(document["fidelity"]) == {"model", "teacher"}
    assert document["fidelity"]["model"]["modality_class"] == {"value": 1.0, "n": 24}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Question fidelity" in report and "### Trivial baselines" in report
    assert "| name prior box | training split: median VG box per modality and asked name |" in report
