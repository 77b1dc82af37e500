"""Reading, writing and validating Med-GRIT and ShareGPT files (tiny fixtures built in tmp_path)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from clinkd.boxes import BoxStyle, convert_markup
from clinkd.data.medgrit import (
    find_test_files,
    load_medgrit,
    load_test_split,
    strip_image_tag,
    write_medgrit,
)
from clinkd.data.records import Sample, Turn
from clinkd.data.sharegpt import (
    DATASET_INFO_FILE,
    IMAGE_PLACEHOLDER,
    convert,
    load_sharegpt,
    write_sharegpt,
)
from clinkd.data.validation import DataError, DataIssues, ImageChecker, RecordProblem

CT = "ct_00--AbdomenCT1K--Case_00017--x_0228"
MR = "mr_t1--BraTS--Case_003--z_0050"
XRAY = "x_ray--ChestX--Case_9"
IDS = (CT, MR, XRAY)


def png_bytes(size: int = 16, fmt: str = "PNG") -> bytes:
    """A deterministic textured grey image, encoded as ``fmt``."""
    pixels = bytes((i * 37 + (i // size) * 11) % 256 for i in range(size * size))
    buffer = io.BytesIO()
    Image.frombytes("L", (size, size), pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def cut(data: bytes) -> bytes:
    """The first two thirds: headers intact, pixel data cut short."""
    return data[: len(data) * 2 // 3]


def tag(record_id: str) -> str:
    return f"Picture 1: <img>{record_id}.png</img>\n"


def record(record_id: str, *pairs: tuple[str, str]) -> dict:
    """A Med-GRIT record whose first question carries the Qwen-VL image tag."""
    conversations = [[question, answer] for question, answer in pairs]
    conversations[0][0] = tag(record_id) + conversations[0][0]
    return {"id": record_id, "conversations": conversations}


GOOD = [
    record(
        CT,
        ("Please locate the liver in the image.", "<ref>liver</ref><box>(112,305),(498,702)</box>"),
        ("What is the object in <box>(540,410),(640,560)</box>?", "Right kidney"),
    ),
    record(MR, ("Where is <ref>the tumour</ref>?", "<ref>the tumour</ref><box>(0,0),(1000,1000)</box>")),
    record(XRAY, ("What can you diagnose from the overall findings in this image?", "Pneumothorax.")),
]


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for record_id in IDS:
        (folder / f"{record_id}.png").write_bytes(png_bytes())
    return folder


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


# ---- Med-GRIT reading ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("Picture 1: <img>/data/ct_1.png</img>\nWhere is the liver?", "Where is the liver?"),
        ("<img>ct_1.png</img>\nWhere is the liver?", "Where is the liver?"),
        ("<img>ct_1.png</img>Where?", "Where?"),
        ("Picture 12:<img>a\nb.png</img>\nQ", "Q"),
        ("No tag at all\n", "No tag at all\n"),
    ],
)
def test_strip_image_tag(question: str, expected: str) -> None:
    assert strip_image_tag(question) == expected


def test_load_medgrit_reads_records_as_shipped(tmp_path: Path, images: Path) -> None:
    path = write_json(tmp_path / "train.json", GOOD)
    issues = DataIssues()
    samples = load_medgrit(path, images, issues=issues)
    assert [s.id for s in samples] == list(IDS)
    assert [s.modality for s in samples] == ["ct", "mr", "x"]
    assert samples[0].image == images / f"{CT}.png"
    assert samples[0].turns == [
        Turn("Please locate the liver in the image.", "<ref>liver</ref><box>(112,305),(498,702)</box>"),
        Turn("What is the object in <box>(540,410),(640,560)</box>?", "Right kidney"),
    ]
    assert samples[2].source == f"{path}#2"
    assert all(s.task is None for s in samples)
    assert issues.total == 0 and issues.counts == {}
    assert issues.summary() == "1 file(s), 3 record(s) read, 3 kept, 0 skipped, no problems"


def test_load_medgrit_task_is_canonicalised(tmp_path: Path, images: Path) -> None:
    samples = load_medgrit(write_json(tmp_path / "t.json", GOOD), images, task="gc", first_conversation_only=True)
    assert {s.task for s in samples} == {"RC"}
    assert len(samples[0].turns) == 1


# Each case replaces record 1 (the MR record) of GOOD; (kind, a fragment the message must contain).
BAD_RECORDS = {
    "not an object": (["mr_x", []], "bad_record", "record is a list"),
    "id missing": ({"conversations": [["q", "a"]]}, "bad_record", "'id' must be a non-empty string"),
    "conversations not a list": ({"id": MR, "conversations": "q a"}, "bad_record", "'conversations' must be"),
    "empty conversations": ({"id": MR, "conversations": []}, "bad_record", "'conversations' must be"),
    "pair of three": ({"id": MR, "conversations": [["q", "a", "b"]]}, "bad_record", "conversations[0] must be"),
    "answer not a string": ({"id": MR, "conversations": [["q", 3]]}, "bad_record", "conversations[0] must be"),
    "unknown modality": (record("cat_01--pets", ("q?", "a")), "unknown_modality", "unknown modality prefix 'cat'"),
    "empty answer": (record(MR, ("Where?", "  ")), "empty_text", "turn 0 answer is empty"),
    "empty question": (record(MR, ("", "a")), "empty_text", "turn 0 question is empty"),
    "unparseable box": (record(MR, ("Where?", "<box>(1,2),(3)</box>")), "bad_box", "unparseable box"),
    "box over 1000": (record(MR, ("Where?", "<box>(1,2),(1001,9)</box>")), "bad_box", "x2=1001 is outside"),
    "negative coordinate": (record(MR, ("Where?", "<box>(-5,2),(10,9)</box>")), "bad_box", "x1=-5 is outside"),
    "x2 < x1": (record(MR, ("Where?", "<box>(500,1),(400,9)</box>")), "bad_box", "x2 < x1 in (500,1),(400,9)"),
    "y2 < y1": (record(MR, ("a", "b"), ("In <box>(1,50),(4,9)</box>?", "c")), "bad_box", "turn 1 question"),
    "dangling box tag": (record(MR, ("Where?", "<box>(1,2),(3,4)")), "bad_box", "unbalanced or misplaced <box>"),
    "reversed box tags": (record(MR, ("Where?", "</box>(1,2),(3,4)<box>")), "bad_box", "unbalanced or misplaced"),
    "dangling ref tag": (record(MR, ("Where?", "<ref>liver <box>(1,2),(3,4)</box>")), "bad_box", "unbalanced <ref>"),
    "qwen2-vl box x2 < x1": (
        record(MR, ("Where?", "<|box_start|>(9,1),(3,4)<|box_end|>")),
        "bad_box",
        "x2 < x1",
    ),
    "id climbing out of the image folder": (
        record("mr_1/../../secret", ("Where?", "Here.")),
        "bad_record",
        "path separator or '..'",
    ),
    "id with a backslash": (record("mr_1\\x", ("Where?", "Here.")), "bad_record", "path separator"),
    "id with ..": (record("mr_..x", ("Where?", "Here.")), "bad_record", "'..'"),
}


def image_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 90).save(buffer, format="PNG")
    return buffer.getvalue()


def symlink_loop(path: Path) -> None:
    path.symlink_to(path.name)  # a link to itself: opening it fails with ELOOP


BAD_IMAGES = {
    "missing image": (b"", "missing_image", "does not exist"),
    "not an image": (b"this is not a PNG", "corrupt_image", "UnidentifiedImageError"),
    "truncated PNG": (cut(png_bytes(64)), "corrupt_image", "OSError: Truncated File Read"),  # caught by verify()
    "truncated JPEG named .png": (cut(png_bytes(64, "JPEG")), "corrupt_image", "image file is truncated"),  # by load()
    "4000×10 image": (image_bytes(4000, 10), "unusable_image", "4000×10 px: a side is below one 14-px patch"),
    "aspect ratio above 200": (image_bytes(3000, 14), "unusable_image", "aspect ratio 214, above the processor's 200"),
    "thinner than a patch": (image_bytes(13, 50), "unusable_image", "13×50 px: a side is below one 14-px patch"),
    "symlink loop": (symlink_loop, "missing_image", "is a symlink loop"),
    "broken link": (lambda path: path.symlink_to("gone.png"), "missing_image", "is a broken link to gone.png"),
}


def _bad_case(name: str, tmp_path: Path, images: Path) -> tuple[Path, str, str]:
    """Write GOOD with record 1 broken as ``name``; return (path, kind, message fragment)."""
    records = list(GOOD)
    if name in BAD_RECORDS:
        records[1], kind, fragment = BAD_RECORDS[name]
    else:
        data, kind, fragment = BAD_IMAGES[name]
        image = images / f"{MR}.png"
        image.unlink()
        if callable(data):
            data(image)
        elif data:
            image.write_bytes(data)
    return write_json(tmp_path / "test_VG.json", records), kind, fragment


ALL_BAD = sorted(BAD_RECORDS) + sorted(BAD_IMAGES)


@pytest.mark.parametrize("name", ALL_BAD)
def test_bad_record_is_skipped_and_counted(name: str, tmp_path: Path, images: Path) -> None:
    path, kind, fragment = _bad_case(name, tmp_path, images)
    issues = DataIssues()
    samples = load_medgrit(path, images, issues=issues)
    assert [s.id for s in samples] == [CT, XRAY]
    assert issues.counts == {kind: 1}
    (issue,) = issues.issues
    assert (issue.file, issue.index, issue.kind.value) == (str(path), 1, kind)
    assert fragment in issue.message
    summary = issues.summary()
    assert "3 record(s) read, 2 kept, 1 skipped" in summary
    assert kind in summary and f"{path} record 1" in summary and fragment in summary


@pytest.mark.parametrize("name", ALL_BAD)
def test_bad_record_stops_with_file_and_record(name: str, tmp_path: Path, images: Path) -> None:
    path, kind, fragment = _bad_case(name, tmp_path, images)
    with pytest.raises(DataError) as raised:
        load_medgrit(path, images, on_error="stop")
    message = str(raised.value)
    assert message.startswith(f"{path} record 1")
    assert fragment in message
    assert raised.value.issue.kind.value == kind


def test_an_image_above_the_pixel_limit_is_refused_from_its_header_without_a_decode(
    tmp_path: Path, images: Path
) -> None:
    (images / f"{MR}.png").write_bytes(cut(image_bytes(300, 200)))  # damaged pixels: a decode would call it corrupt
    issues = DataIssues()
    samples = load_medgrit(
        write_json(tmp_path / "train.json", GOOD), images, issues=issues, check_images=ImageChecker("verify", 50_000)
    )
    assert [s.id for s in samples] == [CT, XRAY]
    (issue,) = issues.issues
    assert (
        issue.kind.value == "unusable_image"
        and "300×200 px: 60000 pixels, above data.max_image_pixels=50000" in issue.message
    )


def test_a_run_checks_images_against_data_max_image_pixels(small_data: Path) -> None:
    from clinkd.config import load_config
    from clinkd.recipes.inputs import load_dataset

    cfg = load_config(None, [f"data.dir={small_data}", "data.synth.enabled=false", "data.max_image_pixels=1000"])
    with pytest.raises(DataError, match=r"no usable record .*48×48 px: 2304 pixels, above data.max_image_pixels=1000"):
        load_dataset(cfg)


def test_stop_message_names_record_id_and_box(tmp_path: Path, images: Path) -> None:
    path, _, _ = _bad_case("x2 < x1", tmp_path, images)
    with pytest.raises(DataError) as raised:
        load_medgrit(path, images, on_error="stop")
    assert str(raised.value) == f"{path} record 1 (id '{MR}'): turn 0 answer: bad box: x2 < x1 in (500,1),(400,9)"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [('[{"id": "ct_1", ', "malformed JSON"), ('{"id": "ct_1"}', "top level is a JSON dict")],
)
def test_malformed_file(text: str, fragment: str, tmp_path: Path, images: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text(text, encoding="utf-8")
    issues = DataIssues()
    assert load_medgrit(path, images, issues=issues) == []
    assert issues.counts == {"malformed_json": 1}
    assert issues.issues[0].index is None and fragment in issues.issues[0].message
    with pytest.raises(DataError, match=f"^{path}: {fragment}"):
        load_medgrit(path, images, on_error="stop")


def test_missing_file_and_bad_policy_raise(tmp_path: Path, images: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_medgrit(tmp_path / "absent.json", images)
    with pytest.raises(ValueError, match="on_error must be one of skip, stop"):
        load_medgrit(write_json(tmp_path / "a.json", GOOD), images, on_error="ignore")


def test_issues_span_several_files(tmp_path: Path, images: Path) -> None:
    issues = DataIssues()
    load_medgrit(write_json(tmp_path / "a.json", GOOD), images, issues=issues)
    load_medgrit(write_json(tmp_path / "b.json", [GOOD[0], BAD_RECORDS["empty answer"][0]]), images, issues=issues)
    (tmp_path / "c.json").write_text("{", encoding="utf-8")
    load_medgrit(tmp_path / "c.json", images, issues=issues)
    assert issues.counts == {"malformed_json": 1, "empty_text": 1}
    summary = issues.summary(examples=1)
    assert summary.splitlines()[0] == "3 file(s), 5 record(s) read, 4 kept, 1 skipped"
    assert "first 1 of 2:" in summary and f"{tmp_path / 'b.json'} record 1 (id '{MR}')" in summary
    assert str(tmp_path / "c.json") not in summary  # beyond the first example


def test_issue_file_lists_every_problem_and_the_console_the_first_few(tmp_path: Path, images: Path) -> None:
    unknown = [record(f"zz_{number}", ("Where?", "Here.")) for number in range(8)]
    issues = DataIssues()
    load_medgrit(write_json(tmp_path / "train.json", GOOD + unknown), images, issues=issues)
    issues_file = tmp_path / "run" / "data_issues.txt"
    console = issues.record(issues_file)
    written = issues_file.read_text(encoding="utf-8")
    assert all(f"record {3 + number} (id 'zz_{number}')" in written for number in range(8))
    assert "all 8:" in written
    assert [line.split() for line in console.splitlines()[1:3]] == [["problem", "count"], ["unknown_modality", "8"]]
    assert sum("[unknown_modality]" in line for line in console.splitlines()) == 5
    assert "first 5 of 8:" in console and console.endswith(f"(every problem: {issues_file})")


def test_a_duplicate_id_is_reported_and_kept_once(tmp_path: Path, images: Path) -> None:
    path = write_json(tmp_path / "test_VG.json", GOOD + [GOOD[1]])
    issues = DataIssues()
    assert [s.id for s in load_medgrit(path, images, issues=issues)] == list(IDS)
    assert issues.counts == {"duplicate_id": 1}
    assert (
        str(issues.issues[0]) == f"{path} record 3 (id '{MR}'): id '{MR}' is already record 1's; only the first is kept"
    )
    summary = convert(path, images, tmp_path / "out", issues=DataIssues())
    assert (summary.records_read, summary.samples_written) == (4, 3)


def test_image_check_levels(tmp_path: Path, images: Path) -> None:
    (images / f"{MR}.png").write_bytes(b"garbage")
    (images / f"{XRAY}.png").unlink()
    path = write_json(tmp_path / "a.json", GOOD)
    assert [s.id for s in load_medgrit(path, images, check_images=False)] == list(IDS)
    issues = DataIssues()
    assert [s.id for s in load_medgrit(path, images, check_images="exists", issues=issues)] == [CT, MR]
    assert issues.counts == {"missing_image": 1}


def test_image_checker_caches_each_path(images: Path) -> None:
    checker = ImageChecker(True)
    image = images / f"{CT}.png"
    checker.check(image)
    image.write_bytes(b"garbage")  # a second check of the same path is served from the cache
    checker.check(image)
    with pytest.raises(RecordProblem, match="is unreadable"):
        ImageChecker("verify").check(image)


# ---- test split ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "names",
    [
        {"VG": "test_VG.json", "ROC": "test_ROC.json", "RC": "test_RC.json", "MIA": "test_MIA.json"},
        {"VG": "Test_VG.json", "ROC": "Test_RO.json", "RC": "Test_GC.json", "MIA": "Test_MII.json"},
        {"VG": "TEST_vg.json", "MIA": "test_mii.json"},
    ],
)
def test_find_test_files(names: dict[str, str], tmp_path: Path) -> None:
    for name in [*names.values(), "test_other.json", "train.json", "test_VG.jsonl"]:
        write_json(tmp_path / name, [])
    assert find_test_files(tmp_path) == {task: tmp_path / name for task, name in names.items()}


def test_two_test_files_for_one_task_is_an_error(tmp_path: Path) -> None:
    for name in ("test_RC.json", "Test_GC.json"):
        write_json(tmp_path / name, [])
    with pytest.raises(DataError, match="two test files for task RC: .*Test_GC.json and .*test_RC.json"):
        find_test_files(tmp_path)


def test_test_split_keeps_first_conversation_and_task(tmp_path: Path, images: Path) -> None:
    write_json(tmp_path / "Test_VG.json", GOOD[:2])
    # The dropped second conversation is bad; OneConv means it is neither kept nor checked.
    write_json(tmp_path / "Test_RO.json", [record(CT, ("What is <box>(1,2),(3,4)</box>?", "Liver"), ("x", ""))])
    issues = DataIssues()
    split = load_test_split(tmp_path, issues=issues, on_error="stop")
    assert list(split) == ["VG", "ROC"]
    assert [len(s.turns) for s in split["VG"]] == [1, 1]
    assert split["VG"][0].turns == [
        Turn("Please locate the liver in the image.", "<ref>liver</ref><box>(112,305),(498,702)</box>")
    ]
    assert split["ROC"][0].turns == [Turn("What is <box>(1,2),(3,4)</box>?", "Liver")]
    assert {s.task for s in split["VG"]} == {"VG"} and split["ROC"][0].task == "ROC"
    assert issues.total == 0
    assert list(load_test_split(tmp_path, images, tasks=["ro"])) == ["ROC"]
    with pytest.raises(FileNotFoundError, match="no test file for MIA"):
        load_test_split(tmp_path, tasks=["VG", "MII"])


# ---- writing and converting -----------------------------------------------------------------------


def _without_source(samples: list[Sample]) -> list[Sample]:
    return [dataclasses.replace(sample, source="") for sample in samples]


def test_write_medgrit_round_trip(tmp_path: Path, images: Path) -> None:
    samples = load_medgrit(write_json(tmp_path / "a.json", GOOD), images)
    write_medgrit(samples, tmp_path / "out" / "b.json")
    assert json.loads((tmp_path / "out" / "b.json").read_text()) == GOOD
    assert _without_source(load_medgrit(tmp_path / "out" / "b.json", images)) == _without_source(samples)


def test_write_medgrit_converts_markup_to_qwen_vl(tmp_path: Path) -> None:
    answer = "<|object_ref_start|>x<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>"
    sample = Sample(CT, Path(f"{CT}.png"), "ct", [Turn("Where?", answer)])
    write_medgrit([sample], tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text())[0]["conversations"] == [
        [tag(CT) + "Where?", "<ref>x</ref><box>(1,2),(3,4)</box>"]
    ]


def llamafactory_problems(dataset_dir: Path, name: str) -> list[str]:
    """LLaMA-Factory's checks on a ShareGPT dataset, replicated (no install needed).

    From ``data/parser.py`` (dataset_info entry: file_name, formatting, columns, tags), ``data/converter.py``
    ``SharegptDatasetConverter`` (role at position i must be the user tag for even i and the assistant tag
    for odd i; an odd message count is broken), ``_find_medias`` (a relative path is joined to media_dir,
    which defaults to dataset_dir) and ``mm_plugin._validate_messages`` (#``<image>`` == len(images)).
    """
    entry = json.loads((dataset_dir / DATASET_INFO_FILE).read_text())[name]
    if entry.get("formatting") != "sharegpt":
        return [f"formatting {entry.get('formatting')!r}"]
    columns, tags = entry["columns"], entry["tags"]
    accept = ((tags["user_tag"],), (tags["assistant_tag"],))  # no observation/function tags are declared
    problems = []
    for index, example in enumerate(json.loads((dataset_dir / entry["file_name"]).read_text())):
        messages = example[columns["messages"]]
        if any(m[tags["role_tag"]] not in accept[i % 2] for i, m in enumerate(messages)):
            problems.append(f"{index}: invalid role tag")
        if len(messages) % 2:
            problems.append(f"{index}: invalid message count")
        images = example[columns["images"]]
        if sum(m[tags["content_tag"]].count(IMAGE_PLACEHOLDER) for m in messages) != len(images):
            problems.append(f"{index}: #<image> != #images")
        if not all(os.path.isfile(os.path.join(dataset_dir, path)) for path in images):
            problems.append(f"{index}: image not found")
    return problems


@pytest.mark.parametrize("image_paths", ["absolute", "relative"])
def test_medgrit_to_sharegpt_round_trip(image_paths: str, tmp_path: Path, images: Path) -> None:
    samples = load_medgrit(write_json(tmp_path / "a.json", GOOD), images)
    out = tmp_path / "lf"
    data_file = write_sharegpt(samples, out, name="medgrit", image_paths=image_paths)
    assert data_file == out / "medgrit.json"
    assert llamafactory_problems(out, "medgrit") == []
    written = json.loads(data_file.read_text())
    assert written[0]["messages"][0]["content"] == IMAGE_PLACEHOLDER + "Please locate the liver in the image."
    assert written[0]["messages"][1]["content"] == (
        "<|object_ref_start|>liver<|object_ref_end|><|box_start|>(112,305),(498,702)<|box_end|>"
    )
    assert Path(written[0]["images"][0]).is_absolute() == (image_paths == "absolute")
    back = load_sharegpt(data_file, on_error="stop")

    def identity(s: Sample) -> tuple:
        return s.id, s.modality, s.image.resolve()

    assert [identity(s) for s in back] == [identity(s) for s in samples]
    qwen_vl = BoxStyle.QWEN_VL
    as_qwen_vl = [
        [Turn(convert_markup(t.question, qwen_vl), convert_markup(t.answer, qwen_vl)) for t in s.turns] for s in back
    ]
    assert as_qwen_vl == [s.turns for s in samples]


def test_dataset_info_is_merged_not_overwritten(tmp_path: Path, images: Path) -> None:
    samples = load_medgrit(write_json(tmp_path / "a.json", GOOD), images)
    write_json(tmp_path / DATASET_INFO_FILE, {"alpaca_en": {"file_name": "alpaca.json"}})
    write_sharegpt(samples, tmp_path, name="one", box_style="qwen-vl")
    write_sharegpt(samples, tmp_path, name="two")
    info = json.loads((tmp_path / DATASET_INFO_FILE).read_text())
    assert list(info) == ["alpaca_en", "one", "two"]
    assert info["one"] == {
        "file_name": "one.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }
    assert "<ref>liver</ref><box>(112,305),(498,702)</box>" in (tmp_path / "one.json").read_text()
    write_sharegpt(samples, tmp_path, name="qwen3", box_style="qwen3-vl")  # Qwen3-VL's native JSON answers
    assert json.loads((tmp_path / "qwen3.json").read_text())[0]["messages"][1]["content"] == (
        '{"bbox_2d": [112, 305, 498, 702], "label": "liver"}'
    )
    (tmp_path / DATASET_INFO_FILE).write_text("[1, 2", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON.*not overwriting"):
        write_sharegpt(samples, tmp_path, name="three")
    assert not (tmp_path / "three.json").exists()
    assert (tmp_path / DATASET_INFO_FILE).read_text() == "[1, 2"


def test_write_sharegpt_refuses_literal_placeholder(tmp_path: Path) -> None:
    sample = Sample(CT, tmp_path / f"{CT}.png", "ct", [Turn("a", "b"), Turn("see <image>", "c")], source="x.json#4")
    with pytest.raises(ValueError, match=r"'ct_00.*\(x.json#4\) turn 1 contains a literal <image>"):
        write_sharegpt([sample], tmp_path)


def sharegpt_record(*contents: str, roles=("user", "assistant"), image: str = f"{CT}.png") -> dict:
    return {
        "messages": [{"role": roles[i % 2], "content": text} for i, text in enumerate(contents)],
        "images": [image],
    }


def test_load_sharegpt_variants_and_placeholder_forms(tmp_path: Path, images: Path) -> None:
    records = [
        sharegpt_record("<image>Where is <ref>liver</ref>?", "<|box_start|>(1,2),(3,4)<|box_end|>"),
        {
            "conversations": [
                {"from": "human", "value": "Picture 1: <image>\nWhat is this?"},
                {"from": "gpt", "value": "Liver"},
                {"from": "human", "value": "And <box>(1,2),(3,4)</box>?"},
                {"from": "gpt", "value": "Kidney"},
            ],
            "images": f"{MR}.png",
        },
    ]
    samples = load_sharegpt(write_json(tmp_path / "sg.json", records), images, on_error="stop")
    assert [(s.id, s.modality, s.image) for s in samples] == [
        (CT, "ct", images / f"{CT}.png"),
        (MR, "mr", images / f"{MR}.png"),
    ]
    assert samples[0].turns == [Turn("Where is <ref>liver</ref>?", "<|box_start|>(1,2),(3,4)<|box_end|>")]
    assert samples[1].turns == [Turn("What is this?", "Liver"), Turn("And <box>(1,2),(3,4)</box>?", "Kidney")]


BAD_SHAREGPT = {
    "roles do not alternate": (
        sharegpt_record("<image>q", "a", roles=("user", "user")),
        "has role 'user', expected 'assistant'",
    ),
    "system message": (sharegpt_record("sys", "<image>q", "a", "b", roles=("system", "user")), "[0] has role 'system'"),
    "odd message count": (sharegpt_record("<image>q", "a", "q2"), "non-empty list of even length"),
    "no placeholder": (sharegpt_record("q", "a"), "found 0 in user and 0 in assistant"),
    "two placeholders": (sharegpt_record("<image>q", "a", "<image>q", "a"), "found 2 in user"),
    "placeholder in answer": (sharegpt_record("q", "<image>a"), "found 0 in user and 1 in assistant"),
    "two images": ({**sharegpt_record("<image>q", "a"), "images": ["a.png", "b.png"]}, "exactly one path"),
    "no messages": ({"images": ["a.png"]}, "neither 'messages' nor 'conversations'"),
    "content not a string": (
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}], "images": ["a.png"]},
        "string 'content'",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_SHAREGPT))
def test_bad_sharegpt_records(name: str, tmp_path: Path, images: Path) -> None:
    bad, fragment = BAD_SHAREGPT[name]
    path = write_json(tmp_path / "sg.json", [sharegpt_record("<image>q", "a"), bad])
    issues = DataIssues()
    assert len(load_sharegpt(path, images, issues=issues)) == 1
    assert issues.counts == {"bad_record": 1} and fragment in issues.issues[0].message
    with pytest.raises(DataError, match=f"^{path} record 1"):
        load_sharegpt(path, images, on_error="stop")


def test_sharegpt_boxes_and_images_are_validated(tmp_path: Path, images: Path) -> None:
    path = write_json(
        tmp_path / "sg.json",
        [
            sharegpt_record("<image>q", "<|box_start|>(1,2),(3000,4)<|box_end|>"),
            sharegpt_record("<image>q", "a", image="ct_absent.png"),
            sharegpt_record("<image>q", "a", image=str(images / f"{XRAY}.png")),  # absolute path kept
        ],
    )
    issues = DataIssues()
    assert [s.id for s in load_sharegpt(path, images, issues=issues)] == [XRAY]
    assert issues.counts == {"bad_box": 1, "missing_image": 1}
    assert [issue.record_id for issue in issues.issues] == [CT, "ct_absent"]


def test_convert_detects_the_input_format(tmp_path: Path, images: Path) -> None:
    medgrit = write_json(tmp_path / "in.json", [*GOOD, BAD_RECORDS["box over 1000"][0]])
    issues = DataIssues()
    summary = convert(medgrit, images, tmp_path / "out", name="mg", issues=issues)
    counts = (summary.input_format, summary.records_read, summary.samples_written, summary.skipped)
    assert counts == ("medgrit", 4, 3, 1)
    assert summary.turns_written == 4 and summary.data_file == tmp_path / "out" / "mg.json"
    assert "4 records read, 3 written (4 turns), 1 skipped" in str(summary)
    assert issues.counts == {"bad_box": 1}
    assert llamafactory_problems(tmp_path / "out", "mg") == []
    out2 = tmp_path / "out2"
    again = convert(summary.data_file, images, out2, name="sg", box_style="qwen-vl", image_paths="relative")
    assert (again.input_format, again.samples_written) == ("sharegpt", 3)
    assert llamafactory_problems(out2, "sg") == []
    with pytest.raises(DataError, match="bad box"):
        convert(medgrit, images, tmp_path / "out3", on_error="stop")


def test_convert_with_nothing_valid_raises(tmp_path: Path, images: Path) -> None:
    (tmp_path / "bad.json").write_text("not json", encoding="utf-8")
    with pytest.raises(DataError, match="(?s)nothing to convert.*malformed_json"):
        convert(tmp_path / "bad.json", images, tmp_path / "out")
    write_json(tmp_path / "empty_answers.json", [BAD_RECORDS["empty answer"][0]])
    with pytest.raises(DataError, match="(?s)no valid record.*empty_text"):
        convert(tmp_path / "empty_answers.json", images, tmp_path / "out")
    write_json(tmp_path / "unknown.json", [{"foo": 1}])
    with pytest.raises(DataError, match="cannot tell Med-GRIT from ShareGPT"):
        convert(tmp_path / "unknown.json", images, tmp_path / "out")
    assert not (tmp_path / "out").exists()
