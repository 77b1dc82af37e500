"""The synthetic Med-GRIT-style benchmark: layout, format, determinism, and that the tasks are fair.

Small datasets (16 train images, 2 test records per cell) for the file checks; the statistical checks
draw a few hundred scenes in memory with :func:`clinkd.synth.generate.draw`.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clinkd.boxes import Box, BoxStyle, parse_boxes
from clinkd.data.medgrit import load_medgrit, load_test_split
from clinkd.data.records import MODALITIES, TASKS, modality_of
from clinkd.data.validation import DataIssues
from clinkd.synth import generate, render_montage
from clinkd.synth.draw import Blob, MaskCounter
from clinkd.synth.generate import draw, plan, synth_id
from clinkd.synth.modalities import MODALITY_SPECS, hot
from clinkd.synth.scene import location_word, size_word
from clinkd.synth.tasks import TEMPLATES, findings, region_caption

SMALL = dict(images=16, test_per_cell=2)
_BOX = r"<box>\(\d+,\d+\),\(\d+,\d+\)</box>"
_REF = r"<ref>[^<]+</ref>"


def _template_pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{ref\}", _REF).replace(r"\{box\}", _BOX))


TEMPLATE_PATTERNS = {
    (task, template): _template_pattern(template) for task, templates in TEMPLATES.items() for template in templates
}


def template_of(question: str) -> tuple[str, str]:
    """The (task, template) that produced ``question`` (image tag removed); fails the test otherwise."""
    matches = [key for key, pattern in TEMPLATE_PATTERNS.items() if pattern.fullmatch(question)]
    assert len(matches) == 1, f"question {question!r} matches templates {matches}"
    return matches[0]


def strip_tag(question: str, record_id: str) -> str:
    tag = f"Picture 1: <img>{record_id}.png</img>\n"
    return question[len(tag):] if question.startswith(tag) else question


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, seed=0, **SMALL)
    return out


@pytest.fixture(scope="module")
def objects(dataset: Path) -> dict[str, dict]:
    return {row["id"]: row for row in map(json.loads, (dataset / "objects.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def drawn_tests() -> list[tuple]:
    """12 test scenes per (task, modality) cell (384), drawn in memory with seed 7."""
    return [(job, *draw(job, seed=7, image_size=112)) for job in plan(images=0, test_per_cell=12)]


def read(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


# ---- primitives ------------------------------------------------------------------------------------


def test_word_rules_and_colour_map_exact_values() -> None:
    assert [size_word((0, 0, w, 5), 100) for w in (19, 20, 31, 32)] == ["small", "medium", "medium", "large"]
    assert location_word(Box(0, 0, 100, 100)) == "upper left"
    assert location_word(Box(400, 400, 600, 600)) == "central"
    assert location_word(Box(900, 340, 1000, 500)) == "right"
    assert location_word(Box(300, 900, 400, 1000)) == "bottom"
    assert hot(0.0) == (0.0, 0.0, 0.0) and hot(0.5) == (1.0, 0.5, 0.0) and hot(1.0) == (1.0, 1.0, 1.0)


def test_mask_counter_matches_brute_force() -> None:
    mask = np.random.default_rng(0).random((12, 12)) < 0.1
    counter = MaskCounter(mask)
    for width, height in ((1, 1), (3, 2), (5, 7), (12, 12)):
        free = counter.free_corners(width, height)
        brute = np.array([
            [not mask[y : y + height, x : x + width].any() for x in range(13 - width)] for y in range(13 - height)
        ])
        assert np.array_equal(free, brute)


def test_blob_reach_bounds_its_raster() -> None:
    """``reach`` is the outline's reach plus 1 px on each side: every pixel centre of the blob lies at least
    ½ px inside it (what lets placement trust the box before rastering), and it is not loose."""
    rng = np.random.default_rng(1)
    for number in range(400):
        harmonics = tuple((k, rng.uniform(0.06, 0.12), rng.uniform(0, 6.3)) for k in (2, 3, 5)) if number % 2 else ()
        blob = Blob(rng.uniform(40, 72), rng.uniform(40, 72), rng.uniform(3, 24), rng.uniform(3, 24),
                    rng.uniform(0, math.pi), harmonics)
        left, up, right, down = blob.reach()
        x1, y1, x2, y2 = blob.raster(112).pixel_box
        assert blob.cx - left <= x1 and x2 <= blob.cx + right
        assert blob.cy - up <= y1 and y2 <= blob.cy + down
        assert (x2 - x1) >= left + right - 4 and (y2 - y1) >= up + down - 4


# ---- files and format ------------------------------------------------------------------------------


def test_layout_and_medgrit_structure(dataset: Path, objects: dict[str, dict]) -> None:
    expected = {"images", "train.json", "meta.json", "objects.jsonl", *(f"test_{task}.json" for task in TASKS)}
    assert {path.name for path in dataset.iterdir()} == expected
    train = read(dataset / "train.json")
    assert len(train) == 16
    for record in train:
        assert set(record) == {"id", "conversations"}
        assert record["conversations"][0][0].startswith(f"Picture 1: <img>{record['id']}.png</img>\n")
        tasks = [template_of(strip_tag(q, record["id"]))[0] for q, _ in record["conversations"]]
        assert sorted(tasks) == sorted(TASKS)
    for task in TASKS:
        records = read(dataset / f"test_{task}.json")
        assert len(records) == 2 * len(MODALITIES)
        for record in records:
            (question, _), = record["conversations"]
            assert question.startswith(f"Picture 1: <img>{record['id']}.png</img>\n")
            assert template_of(strip_tag(question, record["id"]))[0] == task
    images = sorted(path.stem for path in (dataset / "images").iterdir())
    assert images == sorted(objects) and len(images) == 16 + 4 * 2 * len(MODALITIES)
    for stem in images[:: len(images) // 8]:
        with Image.open(dataset / "images" / f"{stem}.png") as image:
            assert (image.mode, image.size) == ("RGB", (112, 112))


def test_project_loaders_accept_every_record(dataset: Path) -> None:
    issues = DataIssues()
    train = load_medgrit(dataset / "train.json", dataset / "images", on_error="stop", issues=issues)
    tests = load_test_split(dataset, on_error="stop", issues=issues)
    assert issues.total == 0
    assert len(train) == 16 and all(len(tests[task]) == 16 for task in TASKS)
    assert all("<img>" not in turn.question for sample in train for turn in sample.turns)


def test_meta_counts(dataset: Path) -> None:
    meta = read(dataset / "meta.json")
    assert meta["seed"] == 0 and meta["image_size"] == 112 and meta["train_images"] == 16
    assert meta["counts"]["train"] == {modality: 2 for modality in MODALITIES}
    assert set(meta["classes"]) == set(MODALITIES)


def test_ids_modalities_and_tasks_all_present(dataset: Path) -> None:
    train = read(dataset / "train.json")
    assert Counter(modality_of(record["id"]) for record in train) == {modality: 2 for modality in MODALITIES}
    assert modality_of(synth_id("x", "train", 2)) == "x" and synth_id("x", "train", 2) == "x_synth--train--000002"
    seen = set()
    for task in TASKS:
        ids = [record["id"] for record in read(dataset / f"test_{task}.json")]
        assert Counter(map(modality_of, ids)) == {modality: 2 for modality in MODALITIES}
        seen.update(ids)
    assert len(seen) == 4 * 16, "every test record has its own image"
    assert not seen & {record["id"] for record in train}


def test_every_box_parses_lies_inside_and_matches_a_drawn_object(dataset: Path, objects: dict[str, dict]) -> None:
    files = ["train.json", *(f"test_{task}.json" for task in TASKS)]
    count = 0
    for name in files:
        for record in read(dataset / name):
            drawn = {tuple(obj["box"]): obj for obj in objects[record["id"]]["objects"]}
            for question, answer in record["conversations"]:
                for box in parse_boxes(question + answer, BoxStyle.QWEN_VL):
                    count += 1
                    assert 0 <= box.x1 < box.x2 <= 1000 and 0 <= box.y1 < box.y2 <= 1000
                    assert (box.x1, box.y1, box.x2, box.y2) in drawn, f"{record['id']}: box not of a drawn object"
    assert count == 16 * 3 + 3 * 2 * len(MODALITIES)  # VG, ROC and RC turns carry exactly one box each
    for row in objects.values():
        for obj in row["objects"]:
            x1, y1, x2, y2 = obj["pixel_box"]
            assert 0 <= x1 < x2 <= 112 and 0 <= y1 < y2 <= 112
            assert Box(*obj["box"]) == Box.from_pixels(x1, y1, x2, y2, 112, 112).rounded()


def test_object_names_unique_and_counts(objects: dict[str, dict]) -> None:
    for row in objects.values():
        names = [obj["name"] for obj in row["objects"]]
        kinds = Counter(obj["kind"] for obj in row["objects"])
        assert len(set(names)) == len(names)
        assert 2 <= kinds["structure"] <= 3 and kinds["lesion"] <= 1
        classes = MODALITY_SPECS[row["modality"]].classes
        assert all(classes[obj["name"]].kind == obj["kind"] for obj in row["objects"])


# ---- determinism ------------------------------------------------------------------------------------


def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_same_seed_gives_identical_bytes_and_other_seed_differs(dataset: Path, tmp_path: Path) -> None:
    generate(tmp_path / "again", seed=0, **SMALL)
    assert _file_bytes(tmp_path / "again") == _file_bytes(dataset)
    generate(tmp_path / "other", seed=1, **SMALL)
    other, first = _file_bytes(tmp_path / "other"), _file_bytes(dataset)
    assert other.keys() == first.keys()
    differing = [name for name in first if other[name] != first[name]]
    assert "train.json" in differing and sum(name.endswith(".png") for name in differing) == 16 + 64


def test_images_do_not_depend_on_the_dataset_size(dataset: Path, tmp_path: Path) -> None:
    """Each image has its own seeded stream, so a larger run keeps the smaller run's images."""
    generate(tmp_path / "bigger", seed=0, images=24, test_per_cell=1)
    for index in range(16):
        name = f"images/{synth_id(MODALITIES[index % 8], 'train', index)}.png"
        assert (tmp_path / "bigger" / name).read_bytes() == (dataset / name).read_bytes()


def test_rerun_removes_stale_images_and_reports_progress(tmp_path: Path) -> None:
    generate(tmp_path, seed=3, images=12, test_per_cell=1)
    calls: list[tuple[int, int, bool]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total, (tmp_path / "train.json").exists()))

    summary = generate(tmp_path, seed=3, images=8, test_per_cell=0, progress=progress)
    assert calls == [(done, 8, False) for done in range(1, 9)], "no train.json while a re-run is under way"
    assert (tmp_path / "train.json").is_file()
    assert len(list((tmp_path / "images").iterdir())) == 8
    assert summary.train_images == 8 and summary.train_turns == 32 and summary.test_images == 0


def test_turn_mix_asks_each_object_once_per_task(tmp_path: Path) -> None:
    mix = {"VG": 3, "ROC": 2, "RC": 1, "MIA": 1}
    summary = generate(tmp_path, seed=0, images=16, test_per_cell=1, turns_per_task=mix)
    rows = {row["id"]: row for row in map(json.loads, (tmp_path / "objects.jsonl").read_text().splitlines())}
    assert json.loads((tmp_path / "meta.json").read_text())["train_turns_per_task"] == mix
    total = 0
    for record in read(tmp_path / "train.json"):
        drawn = {tuple(obj["box"]): obj["name"] for obj in rows[record["id"]]["objects"]}
        asked: dict[str, list[tuple]] = defaultdict(list)
        for question, answer in record["conversations"]:
            task, _ = template_of(strip_tag(question, record["id"]))
            box = next(iter(parse_boxes(answer if task == "VG" else question, BoxStyle.QWEN_VL)), None)
            corners = None if box is None else (box.x1, box.y1, box.x2, box.y2)
            asked[task].append(corners)
            if task == "ROC":
                assert answer == drawn[corners]
        for task, count in mix.items():
            assert len(asked[task]) == (count if task == "MIA" else min(count, len(drawn)))
            if task != "MIA":
                assert len(set(asked[task])) == len(asked[task]), "a task repeats on different objects"
        total += len(record["conversations"])
    assert summary.train_turns == total and summary.test_records == {task: 8 for task in TASKS}


def test_default_turn_mix_is_one_turn_per_task(tmp_path: Path) -> None:
    explicit = generate(tmp_path / "explicit", **SMALL, turns_per_task={task: 1 for task in TASKS})
    generate(tmp_path / "default", **SMALL)
    assert (tmp_path / "explicit" / "train.json").read_bytes() == (tmp_path / "default" / "train.json").read_bytes()
    assert explicit.train_turns == 4 * explicit.train_images


@pytest.mark.parametrize("mix", [{"VQA": 1}, {"VG": -1}, {"VG": 0, "ROC": 0, "RC": 0, "MIA": 0}])
def test_invalid_turn_mix_is_refused(tmp_path: Path, mix: dict) -> None:
    with pytest.raises(ValueError, match="synth turns"):
        generate(tmp_path, **SMALL, turns_per_task=mix)


@pytest.mark.parametrize("kwargs", [dict(seed=-1), dict(images=0), dict(test_per_cell=-1), dict(image_size=16)])
def test_invalid_arguments_are_refused(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        generate(tmp_path, **{**SMALL, **kwargs})


# ---- content ----------------------------------------------------------------------------------------


def _look_features(pixels: np.ndarray) -> np.ndarray:
    """Mean RGB, grey std, black fraction (whole image and top third), 4 × mean |horizontal gradient|."""
    rgb = pixels.astype(np.float64) / 255
    grey = rgb.mean(axis=2)
    third = grey.shape[0] // 3
    return np.array([
        *rgb.reshape(-1, 3).mean(axis=0),
        grey.std(),
        (grey < 0.08).mean(),
        (grey[:third] < 0.08).mean(),
        4 * np.abs(np.diff(grey, axis=1)).mean(),
    ])


def test_the_eight_modalities_look_different(drawn_tests: list[tuple]) -> None:
    features = defaultdict(list)
    for job, scene, _ in drawn_tests[::6]:
        features[job.modality].append(_look_features(scene.pixels))
    centroid = {modality: np.mean(rows, axis=0) for modality, rows in features.items()}
    assert all(len(features[modality]) >= 8 for modality in MODALITIES)
    for a, b in itertools.combinations(MODALITIES, 2):
        assert np.linalg.norm(centroid[a] - centroid[b]) > 0.08, (a, b)


def test_answers_are_read_off_the_objects(drawn_tests: list[tuple]) -> None:
    for job, scene, (turn,) in drawn_tests:
        by_box = {obj.box.to_text(BoxStyle.QWEN_VL): obj for obj in scene.objects}
        if job.task == "VG":
            name = re.search(r"<ref>(.*?)</ref>", turn.question).group(1)
            target = next(obj for obj in scene.objects if obj.name == name)
            assert turn.answer == f"<ref>{name}</ref>" + target.box.to_text(BoxStyle.QWEN_VL)
        elif job.task in ("ROC", "RC"):
            target = by_box[re.search(_BOX, turn.question).group(0)]
            assert turn.answer == (target.name if job.task == "ROC" else region_caption(target))
        else:
            assert turn.answer == findings(scene)
            assert all(obj.name in turn.answer for obj in scene.objects)
        for obj in scene.objects:
            assert obj.size == size_word(obj.pixel_box, 112) and obj.location == location_word(obj.box)


def test_question_wording_does_not_predict_the_answer(drawn_tests: list[tuple]) -> None:
    """Every template is used with several answers, and every frequent answer with several templates."""
    answers_of = defaultdict(set)
    templates_of = defaultdict(set)
    for job, _, (turn,) in drawn_tests:
        task, template = template_of(turn.question)
        assert task == job.task
        answer = re.sub(_BOX, "", turn.answer) if task == "VG" else turn.answer
        answers_of[(task, template)].add(answer)
        templates_of[(task, answer)].add(template)
    assert set(answers_of) == set(TEMPLATE_PATTERNS), "every template is used"
    assert all(len(answers) >= 5 for answers in answers_of.values())
    roc_counts = Counter(turn.answer for job, _, (turn,) in drawn_tests if job.task == "ROC")
    frequent = [answer for answer, count in roc_counts.items() if count >= 4]
    assert frequent and all(len(templates_of[("ROC", answer)]) >= 2 for answer in frequent)


def test_trivial_baselines_stay_low(drawn_tests: list[tuple]) -> None:
    """Centre box of median size for VG, majority class for ROC, most frequent answer for RC and MIA."""
    answers = defaultdict(list)
    for job, _, (turn,) in drawn_tests:
        answers[job.task].append(turn.answer)
    truth = [Box.from_text(answer) for answer in answers["VG"]]
    width = statistics.median(box.x2 - box.x1 for box in truth)
    height = statistics.median(box.y2 - box.y1 for box in truth)
    centre = Box(500 - width / 2, 500 - height / 2, 500 + width / 2, 500 + height / 2)
    assert np.mean([centre.iou(box) >= 0.5 for box in truth]) < 0.1
    share = {task: Counter(answers[task]).most_common(1)[0][1] / len(answers[task]) for task in ("ROC", "RC", "MIA")}
    assert share["ROC"] < 0.15 and share["RC"] < 0.05 and share["MIA"] < 0.05
    per_modality = defaultdict(Counter)
    for job, _, (turn,) in drawn_tests:
        if job.task == "ROC":
            per_modality[job.modality][turn.answer] += 1
    assert max(c.most_common(1)[0][1] / sum(c.values()) for c in per_modality.values()) < 0.5


def test_object_class_is_visible_in_its_box(drawn_tests: list[tuple]) -> None:
    """A nearest-centroid classifier on box-pixel statistics beats the majority class by a wide margin."""
    rows = defaultdict(list)
    for job, scene, _ in drawn_tests:
        pixels = scene.pixels.astype(np.float64) / 255
        for obj in scene.objects:
            x1, y1, x2, y2 = obj.pixel_box
            patch = pixels[y1:y2, x1:x2].reshape(-1, 3)
            rows[job.modality].append((obj.name, np.array([*patch.mean(0), *patch.std(0), (x2 - x1) / 112])))
    accuracy, majority = [], []
    for items in rows.values():
        train, test = items[::2], items[1::2]
        scale = np.std([f for _, f in train], axis=0) + 1e-6
        centroids = {name: np.mean([f for n, f in train if n == name], axis=0) for name in {n for n, _ in train}}
        predicted = [min(centroids, key=lambda name: np.linalg.norm((f - centroids[name]) / scale)) for _, f in test]
        accuracy.append(np.mean([p == name for p, (name, _) in zip(predicted, test)]))
        majority.append(Counter(name for name, _ in test).most_common(1)[0][1] / len(test))
    assert np.mean(accuracy) > 0.7 and np.mean(accuracy) > np.mean(majority) + 0.35


def test_render_montage(dataset: Path, tmp_path: Path) -> None:
    out = render_montage(dataset, tmp_path / "montage.png", scale=2)
    with Image.open(out) as image:
        assert image.size[0] == 4 * (2 * 224 + 4) and image.size[1] > 2 * 224
    with pytest.raises(ValueError, match="no validation image"):
        render_montage(dataset, tmp_path / "none.png", split="validation")


def test_run_regenerates_a_synth_folder_made_with_other_settings_and_leaves_real_data_alone(tmp_path: Path) -> None:
    from clinkd.config import load_config
    from clinkd.recipes.inputs import ensure_synth

    def config(folder: Path, mix: str):
        synth = ["data.synth.images=8", "data.synth.test_per_cell=1", f"data.synth.turns={mix}"]
        return load_config(None, [f"data.dir={folder}", *synth])

    ensure_synth(config(tmp_path / "synth", "{VG: 1, ROC: 1, RC: 1, MIA: 1}"))
    assert len(read(tmp_path / "synth" / "train.json")[0]["conversations"]) == 4
    stamp = (tmp_path / "synth" / "train.json").stat().st_mtime_ns
    ensure_synth(config(tmp_path / "synth", "{VG: 1, ROC: 1, RC: 1, MIA: 1}"))
    assert (tmp_path / "synth" / "train.json").stat().st_mtime_ns == stamp, "same settings: reused"
    ensure_synth(config(tmp_path / "synth", "{VG: 2, ROC: 1, RC: 1, MIA: 1}"))
    assert json.loads((tmp_path / "synth" / "meta.json").read_text())["train_turns_per_task"]["VG"] == 2
    real = tmp_path / "real"
    real.mkdir()
    (real / "train.json").write_text("[]")
    ensure_synth(config(real, "{VG: 2, ROC: 1, RC: 1, MIA: 1}"))
    assert (real / "train.json").read_text() == "[]" and not (real / "meta.json").exists()
