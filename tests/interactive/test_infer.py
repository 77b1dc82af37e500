"""clinkd infer: overlay geometry, question completion, every bad input, and end to end on a tiny trained model."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clinkd.boxes import Box
from clinkd.cli import app
from clinkd.interactive.infer import (
    InferInputError,
    complete_question,
    guess_task,
    infer,
    labelled_answer_boxes,
    open_image,
    prepare_request,
)
from clinkd.interactive.overlay import ROLE_COLOURS, BoxRole, LabelledBox, draw_boxes, pixel_rect, upscale_factor

from conftest import VG_QUESTION  # the overfitted model's one question

runner = CliRunner()

BLACK = (0, 0, 0)


def _colour(image, x, y):
    return image.getpixel((x, y))[:3]


# ---- overlay geometry ---------------------------------------------------------------------------
def test_box_pixels_sit_where_the_box_says():
    source = Image.new("RGB", (400, 200), BLACK)
    predicted, truth = Box(100, 200, 600, 800), Box(700, 100, 950, 500)
    drawn = draw_boxes(
        source, [LabelledBox(truth, "truth", BoxRole.GROUND_TRUTH), LabelledBox(predicted, "liver")], min_side=448
    )
    assert drawn.size == (1200, 600)  # ⌈448/200⌉ = 3× enlargement
    for box, role in ((predicted, BoxRole.PREDICTED), (truth, BoxRole.GROUND_TRUTH)):
        colour = ROLE_COLOURS[role]
        x1, y1, x2, y2 = (round(v) for v in box.to_pixels(1200, 600))
        mid_x, mid_y = (x1 + x2) // 2, (y1 + y2) // 2
        for x, y in ((x1, mid_y), (x2, mid_y), (mid_x, y2), (x1 + 1, mid_y), (x2 - 1, mid_y), (mid_x, y2 - 1)):
            assert _colour(drawn, x, y) == colour, (role, x, y)
        assert _colour(drawn, mid_x, mid_y) == BLACK  # an outline, not a filled box
        assert _colour(drawn, x1 - 2, mid_y) == BLACK and _colour(drawn, x2 + 2, mid_y) == BLACK
        assert _colour(drawn, mid_x, y2 + 2) == BLACK
    assert source.getpixel((0, 0)) == BLACK  # the input is not drawn on


def test_label_tab_sits_above_the_box_or_inside_at_the_top_edge():
    drawn = draw_boxes(
        Image.new("RGB", (500, 500), BLACK),
        [LabelledBox(Box(400, 400, 600, 600), "x"), LabelledBox(Box(0, 0, 200, 200), "y")],
        None,
    )
    assert _colour(drawn, 202, 198) == ROLE_COLOURS[BoxRole.PREDICTED]  # room above: the tab ends on the top edge
    assert _colour(drawn, 2, 4) == ROLE_COLOURS[BoxRole.PREDICTED]  # no room above: inside the box
    edge = draw_boxes(
        Image.new("RGB", (500, 500), BLACK), [LabelledBox(Box(950, 500, 1000, 600), "a long label")], None
    )
    assert _colour(edge, 498, 246) == ROLE_COLOURS[BoxRole.PREDICTED]  # slid left to stay inside the image
    x1 = pixel_rect(Box(950, 500, 1000, 600), 500, 500)[0]
    assert ROLE_COLOURS[BoxRole.PREDICTED] in {
        _colour(edge, x1 - 20, y) for y in range(220, 250)
    }  # …so it starts left of the box


def test_pixel_rect_clamps_the_far_edges_inside_the_image():
    assert pixel_rect(Box(0, 0, 1000, 1000), 112, 56) == (0, 0, 111, 55)
    assert pixel_rect(Box(500, 250, 750, 500), 200, 100) == (100, 25, 150, 50)


@pytest.mark.parametrize(
    ("size", "min_side", "factor"),
    [((112, 112), 448, 4), ((100, 30), 448, 15), ((1024, 800), 448, 1), ((50, 50), None, 1)],
)
def test_small_images_are_enlarged_by_an_integer_factor(size, min_side, factor):
    assert upscale_factor(*size, min_side) == factor


# ---- task and question --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("question", "task", "sent"),
    [
        ("liver", "VG", "Where is the <ref>liver</ref> in this image?"),
        ("<ref>right kidney</ref>", "VG", "Where is the <ref>right kidney</ref> in this image?"),
        ("Where is the <ref>liver</ref>?", "VG", "Where is the <ref>liver</ref>?"),
        ("(120,300),(480,700)", "ROC", "What is the object in <box>(120,300),(480,700)</box>?"),
        ("Describe the region (120,300),(480,700).", "RC", "Describe the region <box>(120,300),(480,700)</box>."),
        ("What is in <|box_start|>(1,2),(3,4)<|box_end|>?", "ROC", "What is in <|box_start|>(1,2),(3,4)<|box_end|>?"),
        ("What can you diagnose from this image?", "MIA", "What can you diagnose from this image?"),
    ],
)
def test_the_task_is_guessed_and_a_bare_target_gets_the_training_template(question, task, sent):
    assert guess_task(question) == task
    assert complete_question(task, question) == sent


def test_a_given_task_builds_its_template():
    assert complete_question("RC", "(120,300),(480,700)") == "Describe the region <box>(120,300),(480,700)</box>."
    assert complete_question("MIA", "") == "What can you diagnose from the overall findings in this image?"


@pytest.mark.parametrize(
    ("question", "task", "message"),
    [
        ("", None, "empty question"),
        ("   ", "vg", "empty question"),
        ("liver", "roc", "exactly one box"),
        ("(1,2),(3,4) and (5,6),(7,8)", "rc", "found 2"),
        ("(1,2),(3,4)", "vg", "has a box"),
        ("(1,2),(3000,4)", None, "outside the 0–1000 scale"),
        ("liver", "segment", "unknown task"),
    ],
)
def test_questions_that_do_not_fit_are_refused(tmp_path, question, task, message):
    image = tmp_path / "x.png"
    Image.new("RGB", (16, 16)).save(image)
    with pytest.raises(InferInputError, match=message):
        prepare_request(image, question, task)


def test_answer_boxes_are_labelled_with_their_ref_phrase_or_their_number():
    boxes, error = labelled_answer_boxes(
        "<|object_ref_start|>liver<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>"
    )
    assert error is None and [(b.label, b.box) for b in boxes] == [("liver", Box(1, 2, 3, 4))]
    boxes, _ = labelled_answer_boxes("<box>(1,2),(3,4)</box><box>(5,6),(7,8)</box>")
    assert [b.label for b in boxes] == ["box 1", "box 2"]
    assert labelled_answer_boxes("<box>(1,2),(3</box>")[1].startswith("unparseable box")


# ---- images -------------------------------------------------------------------------------------
QUADRANT_CORNERS = ((0, 0), (8, 0), (8, 8))  # the top-left corner of three quadrants of a 16 px image


def quadrants(values) -> np.ndarray:
    """A 16×16 array of four 8 px quadrants of ``values`` (2×2): the smallest image the model takes is one 14 px
    patch."""
    return np.kron(np.array(values), np.ones((8, 8), dtype=int))


def test_grayscale_and_16_bit_pngs_are_converted_to_rgb(tmp_path):
    gray = tmp_path / "gray.png"
    Image.new("L", (16, 16), 77).save(gray)
    assert open_image(gray).getpixel((0, 0)) == (77, 77, 77)
    deep = tmp_path / "deep.png"
    Image.fromarray(quadrants([[1000, 3000], [3000, 5000]]).astype(np.uint16)).save(deep)
    assert Image.open(deep).mode.startswith("I")
    assert [open_image(deep).getpixel(xy)[0] for xy in QUADRANT_CORNERS] == [0, 127, 255]  # used range → 0–255


def _write_dicom(path, pixels):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    dataset.RescaleSlope, dataset.RescaleIntercept = 1, -1024
    dataset.PixelData = pixels.astype(np.uint16).tobytes()
    dataset.save_as(path, enforce_file_format=True)


def test_a_dicom_file_is_read_through_pydicom(tmp_path):
    pytest.importorskip("pydicom")
    path = tmp_path / "scan.dcm"
    _write_dicom(path, quadrants([[0, 2000], [2000, 4000]]))
    image = open_image(path)
    assert image.mode == "RGB" and image.size == (16, 16)
    assert [image.getpixel(xy)[0] for xy in QUADRANT_CORNERS] == [0, 127, 255]


# ---- the command: every bad input is one red line and exit code 2 --------------------------------
def _cli(*args):
    """Exit code and stdout+stderr; stdout alone is ``result.stdout`` (click ≥ 8.2 keeps them apart)."""
    result = runner.invoke(app, ["infer", *map(str, args)])
    return result.exit_code, result.output, result.stdout


@pytest.fixture()
def png(tmp_path):
    path = tmp_path / "ct_1.png"
    Image.new("RGB", (32, 32), (9, 9, 9)).save(path)
    return path


def test_bad_inputs_fail_with_one_clear_line(tmp_path, png):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not pixels")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    (weightless / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    wide = tmp_path / "ct_wide.png"
    Image.new("RGB", (4000, 10)).save(wide)
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop.name)
    cases = [
        (["--model", empty_dir, "--image", wide, "--question", "liver"], "cannot be fed to the model: 4000×10 px"),
        (
            ["--model", empty_dir, "--image", png, "--question", "liver", "data.max_image_pixels=1000"],
            "1024 pixels, above data.max_image_pixels=1000",
        ),
        (["--model", empty_dir, "--image", loop, "--question", "liver"], "is a symlink loop"),
        (
            ["--model", loop, "--image", png, "--question", "liver"],
            "model directory " + str(loop) + " is a symlink loop",
        ),
        (["--model", empty_dir, "--image", tmp_path / "none.png", "--question", "liver"], "does not exist"),
        (["--model", empty_dir, "--image", tmp_path, "--question", "liver"], "is not a file"),
        (["--model", empty_dir, "--image", not_an_image, "--question", "liver"], "is not an image"),
        (["--model", empty_dir, "--image", png, "--question", "  "], "empty question"),
        (["--model", empty_dir, "--image", png, "--question", "liver", "--gt", "(1,2),(3"], "ground-truth box"),
        (["--model", tmp_path / "nowhere", "--image", png, "--question", "liver"], "does not exist"),
        (["--model", empty_dir, "--image", png, "--question", "liver"], "not a clinkd or Qwen2-VL checkpoint"),
        (
            ["--model", broken, "--image", png, "--question", "liver"],
            f"{broken / 'config.json'} is damaged (JSONDecodeError: ",
        ),
        (
            ["--model", weightless, "--image", png, "--question", "liver"],
            "not a loadable clinkd or Qwen2-VL checkpoint",
        ),
        (
            ["--model", other, "--image", png, "--question", "liver"],
            "is not one of qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_5",
        ),
        (
            ["--model", empty_dir, "--image", png, "--question", "liver", "--select", "vote"],
            "select.method: Input should be 'greedy', 'beam' or 'sasg'",
        ),
    ]
    for args, message in cases:
        code, output, _ = _cli(*args)
        assert code == 2, (args, output)
        assert "error:" in output and message in " ".join(output.split()), (args, output)
        assert "Traceback" not in output


# ---- end to end ---------------------------------------------------------------------------------
def test_infer_on_a_trained_tiny_model_draws_its_box_where_the_answer_says(trained_checkpoint, overfit_image, tmp_path):
    out = tmp_path / "drawn.png"
    code, output, stdout = _cli(
        "--model",
        trained_checkpoint,
        "--image",
        overfit_image,
        "--question",
        "liver",
        "--task",
        "vg",
        "--out",
        out,
        "--gt",
        "(600,50),(950,250)",
        "--json",
    )
    assert code == 0, output
    result = json.loads(stdout)
    assert result["task"] == "VG" and result["question"] == VG_QUESTION
    assert [(b["label"], b["box"]) for b in result["boxes"]] == [("liver", [112.0, 305.0, 498.0, 702.0])]
    drawn = Image.open(out)
    assert drawn.size == (448, 448)
    for box_json, role in (
        (result["boxes"][0]["box"], BoxRole.PREDICTED),
        (result["ground_truth"], BoxRole.GROUND_TRUTH),
    ):
        x1, y1, x2, y2 = pixel_rect(Box(*box_json), *drawn.size)
        mid_x, mid_y = (x1 + x2) // 2, (y1 + y2) // 2
        for x, y in ((x1, mid_y), (x2, mid_y), (mid_x, y2)):
            assert _colour(drawn, x, y) == ROLE_COLOURS[role]
        assert _colour(drawn, mid_x, mid_y) == (30, 30, 30)


def test_infer_selects_by_any_registered_name(trained_checkpoint, overfit_image):
    beam = ("--model", trained_checkpoint, "--image", overfit_image, "--question", "liver", "--task", "vg", "--json")
    code, output, stdout = _cli(*beam, "--select", "beam", "select.num_beams=2")
    assert code == 0, output
    result = json.loads(stdout)
    assert result["selector"] == "beam" and result["candidates"] == [] and result["task"] == "VG"
    code, output, stdout = _cli(*beam, "--select", "greedy")
    assert code == 0 and json.loads(stdout)["selector"] is None, output


def test_infer_function_reads_a_16_bit_image_and_reports_the_query_box(trained_checkpoint, tmp_path):
    from clinkd.interactive.infer import load_model

    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((56, 56), 4000, dtype=np.uint16)).save(deep)
    model, processor = load_model(trained_checkpoint)
    result = infer(model, processor, deep, "(100,100),(400,400)", max_new_tokens=4)
    assert result.task == "ROC" and result.question == "What is the object in <box>(100,100),(400,400)</box>?"
    assert [item.box for item in result.query_boxes] == [Box(100, 100, 400, 400)]
    assert result.query_boxes[0].role is BoxRole.QUERY and result.candidates == ()


def test_sasg_answers_with_its_best_scored_candidate(trained_checkpoint, overfit_image, tiny_sasg):
    from clinkd.interactive.infer import load_model

    model, processor = load_model(trained_checkpoint)
    result = infer(model, processor, overfit_image, "liver", select=tiny_sasg)
    assert result.selector == "sasg" and len(result.candidates) == 3
    assert result.answer == result.candidates[0].text
    valid = [c.score for c in result.candidates if c.score != float("-inf")]
    assert valid and result.candidates[0].score == max(valid)  # the best CLIP score wins (no ties here)
    assert json.loads(json.dumps(result.to_json(), allow_nan=False))["selector"] == "sasg"  # -inf is written as null


def test_a_selector_answers_with_its_best_candidate(tiny_model, tiny_processor, png):
    from clinkd.engine.generate import Choice
    from clinkd.interactive.infer import RankedCandidate

    class FixedSelector:
        name = "fixed"

        def __call__(self, model, processor, collator, task, samples, max_new_tokens):
            assert task == "VG" and len(samples) == 1 and samples[0].turns[0].question == VG_QUESTION
            best = "<ref>liver</ref><box>(1,2),(30,40)</box>"
            return [Choice(best, {}, (RankedCandidate(best, 0.9), RankedCandidate("kidney", 0.1)))]

    result = infer(tiny_model, tiny_processor, png, "liver", select=FixedSelector())
    assert result.selector == "fixed" and [c.score for c in result.candidates] == [0.9, 0.1]
    assert result.answer_text == "liver(1,2),(30,40)" and result.boxes[0].box == Box(1, 2, 30, 40)


# ---- the demo's logic (the browser test is tests/interactive/test_demo_browser.py) ----------------------------
def test_the_demo_offers_one_example_per_task_and_modality_with_the_vg_truth_box(tmp_path):
    from clinkd.data.records import MODALITIES, TASKS
    from clinkd.interactive.demo import load_examples
    from clinkd.synth import generate

    generate(tmp_path, seed=0, images=8, test_per_cell=2, image_size=48)
    examples = load_examples(tmp_path, per_cell=1)
    assert sorted((e.task, e.label.split(" · ")[1].split("_")[0]) for e in examples) == sorted(
        (t, m) for t in TASKS for m in MODALITIES
    )
    for example in examples:
        assert example.image.is_file()
        assert (
            (example.ground_truth == Box.from_text(example.reference))
            if example.task == "VG"
            else example.ground_truth is None
        )


def test_a_demo_question_shows_errors_as_a_status_line_and_answers_as_text_and_image(trained_checkpoint, overfit_image):
    from clinkd.interactive.demo import answer_question
    from clinkd.interactive.infer import load_model

    model, processor = load_model(trained_checkpoint)
    assert answer_question(model, processor, None, "liver").status.startswith("**error:** upload an image")
    refused = answer_question(model, processor, overfit_image, "liver", task="ROC")
    assert refused.overlay is None and "exactly one box" in refused.status
    bad_truth = answer_question(model, processor, overfit_image, "liver", ground_truth="(1,2)")
    assert "ground-truth box" in bad_truth.status
    shown = answer_question(model, processor, overfit_image, "liver", ground_truth="(600,50),(950,250)")
    assert shown.answer == "liver(112,305),(498,702)" and shown.candidates == []
    assert shown.overlay.size == (448, 448) and shown.status.startswith("**VG**")
    x1, y1, x2, y2 = pixel_rect(Box(600, 50, 950, 250), 448, 448)
    assert _colour(shown.overlay, x1, (y1 + y2) // 2) == ROLE_COLOURS[BoxRole.GROUND_TRUTH]


def test_the_demo_serves_the_images_it_shows_and_no_other_file_of_the_data(tiny_model, tiny_processor, small_data):
    import socket
    import urllib.error
    import urllib.request

    from clinkd.interactive.demo import build_demo, launch_demo, load_examples

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    blocks = build_demo(tiny_model, tiny_processor, data_dir=small_data)
    url = launch_demo(blocks, port=port, data_dir=small_data)

    def status(path) -> int:
        try:
            with urllib.request.urlopen(f"{url}gradio_api/file={path.resolve()}") as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    try:
        shown = load_examples(small_data)[0].image
        unshown = next(
            path
            for path in (small_data / "images").iterdir()
            if path not in {e.image for e in load_examples(small_data)}
        )
        assert status(shown) == 200
        assert status(small_data / "train.json") == status(unshown) == status(small_data / "test_VG.json") == 403
    finally:
        blocks.close()


def test_the_demo_command_checks_its_model_before_serving(tmp_path):
    result = runner.invoke(app, ["demo", "--model", str(tmp_path / "none"), "--select", "vote"])
    assert result.exit_code == 2 and "select.method: Input should be" in " ".join(result.output.split())
    result = runner.invoke(app, ["demo", "--model", str(tmp_path / "none")])
    assert result.exit_code == 2 and "does not exist" in " ".join(result.output.split())
