"""clinkd pretrain: the generic grounding corpus, the dense labels and a smoke run of the recipe (resume included)."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from clinkd.boxes import Box, parse_boxes
from clinkd.cli import app
from clinkd.data.records import MODALITY_NAMES
from clinkd.pretrain.corpus import (
    BACKGROUND_MAX,
    CORPUS_TEMPLATES,
    LOOKS,
    NAMES,
    OBJECT_MIN,
    PLURALS,
    SCAN,
    TASKS,
    TISSUE,
    CorpusObject,
    CorpusScene,
    LanguageStream,
    draw_scene,
    field_of_view,
    layout,
    make_turn,
    objects_allowed,
    scene_rng,
    tokenizer_texts,
)
from clinkd.pretrain.dense import cell_labels
from clinkd.pretrain.words import MEDICAL_WORDS, WORDS
from clinkd.synth.modalities import MODALITY_SPECS

MIX = {"grounding": 1, "referring": 1, "counting": 1, "captioning": 1}


def tiny_pretrain(out, steps: int = 2, dense_steps: int = 1, eval_scenes: int = 2) -> list[str]:
    """A ``clinkd pretrain`` command line for an xs model, batch 2, one thread, into ``out``."""
    return [
        "pretrain", f"pretrain.out={out}", "model.size=xs", "model.tokenizer_vocab=400", f"pretrain.steps={steps}",
        f"pretrain.dense_steps={dense_steps}", "pretrain.batch_size=2", f"pretrain.eval_scenes={eval_scenes}",
        "train.threads=1", "predict.max_new_tokens.VG=4",
    ]


def stream(seed: int = 0, max_objects: int = 3, curriculum_steps: int = 4) -> LanguageStream:
    return LanguageStream(
        seed,
        steps=40,
        batch_size=2,
        image_size=112,
        max_objects=max_objects,
        curriculum_steps=curriculum_steps,
        tasks=MIX,
    )


def test_the_corpus_is_the_same_for_a_seed_and_differs_across_seeds():
    def drawn(seed):
        examples = [stream(seed)[index] for index in range(6)]
        return [(np.asarray(Image.open(example.image)).tobytes(), example.turns) for example in examples]

    assert drawn(0) == drawn(0)
    assert all(a != b for a, b in zip(drawn(0), drawn(1)))


@pytest.mark.parametrize("count", [1, 3, 6])
def test_each_box_is_the_extent_of_its_objects_drawn_pixels(count):
    for index in range(4):
        scene = draw_scene(scene_rng(7, "dense", index), 112, count)
        bright = scene.pixels.max(axis=2) > 255 * (BACKGROUND_MAX + OBJECT_MIN) / 2  # object pixels, read off the image
        inside_a_box = np.zeros_like(bright)
        for obj in scene.objects:
            x1, y1, x2, y2 = obj.pixel_box
            rows, cols = np.nonzero(bright[y1:y2, x1:x2])
            assert (x1 + cols.min(), y1 + rows.min(), x1 + cols.max() + 1, y1 + rows.max() + 1) == obj.pixel_box
            assert obj.box == Box.from_pixels(*obj.pixel_box, 112, 112).rounded()
            inside_a_box[y1:y2, x1:x2] = True
        assert not (bright & ~inside_a_box).any()
        assert len({obj.name for obj in scene.objects}) == count
        assert all(a.box.iou(b.box) == 0 for i, a in enumerate(scene.objects) for b in scene.objects[i + 1 :])


@pytest.mark.parametrize("look", LOOKS)
def test_every_task_answers_from_the_scene(look):
    look = LOOKS[look]
    scene = draw_scene(scene_rng(0, "dense", 0), 112, 3, look)
    by_name = {obj.name: obj for obj in scene.objects}
    assert set(by_name) <= set(look.names)
    rng = np.random.default_rng(0)
    for _ in range(20):
        grounding = make_turn("grounding", scene.objects, rng, look)
        name = re.search(r"<ref>(.*?)</ref>", grounding.question).group(1)
        assert parse_boxes(grounding.answer) == [by_name[name].box]
        referring = make_turn("referring", scene.objects, rng, look)
        assert by_name[referring.answer].box == parse_boxes(referring.question)[0]
        counting = make_turn("counting", scene.objects, rng, look)
        group = re.fullmatch(r"(?:How many|Count the) (.+?) (?:are there\?|in the picture\.)", counting.question).group(
            1
        )
        assert counting.answer == str(
            sum(group in ("shapes", f"{obj.appearance} shapes", PLURALS[obj.shape]) for obj in scene.objects)
        )
    caption = make_turn("captioning", scene.objects, rng, look).answer
    assert all(name in caption for name in by_name) and caption.endswith(".")


def test_no_benchmark_class_or_modality_name_is_in_the_corpus_vocabulary():
    medical = " ".join(MEDICAL_WORDS)  # the scan tokenizer's extra words, never drawn into a scene or a turn
    texts = [
        text for look in LOOKS.values() for text in tokenizer_texts(0, 112, 6, scenes=200, look=look) if text != medical
    ]
    names = [name for look in LOOKS.values() for name in look.names]
    corpus = " ".join([*texts, *WORDS, *names, *(t for task in TASKS for t in CORPUS_TEMPLATES[task])]).lower()
    benchmark = {cls.name for spec in MODALITY_SPECS.values() for cls in (*spec.structures, *spec.lesions)}
    benchmark |= set(MODALITY_NAMES) | {name.lower() for name in MODALITY_NAMES.values()}
    assert len(benchmark) > 40
    found = sorted(name for name in benchmark if re.search(rf"(?<![\w-]){re.escape(name.lower())}(?![\w-])", corpus))
    assert found == []
    assert all(24 <= len(look.names) <= 60 for look in LOOKS.values())


def test_tissue_objects_lie_in_the_field_of_view_and_stand_out_by_grey_level_or_texture():
    small = total = 0
    for index in range(12):
        rng = scene_rng(3, "dense", index)
        outside = field_of_view(rng, 112)
        objects = layout(rng, 112, 4, TISSUE, outside)
        assert not any((obj.mask & outside).any() for obj in objects)  # the black around the field holds no object
        scene = draw_scene(scene_rng(3, "heldout", index), 112, 3, TISSUE)
        red = scene.pixels[..., 0].astype(float)  # every tint keeps red at 1: the red channel is the luminance
        for obj in scene.objects:
            x1, y1, x2, y2 = obj.pixel_box
            ring = np.zeros_like(obj.mask)
            ring[max(0, y1 - 3) : y2 + 3, max(0, x1 - 3) : x2 + 3] = True
            ring[y1:y2, x1:x2] = False
            ring &= red > 12  # tissue, not the black outside the field
            inside, around = red[obj.mask], red[ring]
            contrast = abs(inside.mean() - around.mean()) / 255
            spreads = sorted([inside.std(), around.std()])
            assert contrast > 0.04 or spreads[1] > 2 * spreads[0], (
                index,
                obj.name,
                contrast,
            )  # a level or a texture apart
            small += max(x2 - x1, y2 - y1) < 28
            total += 1
    assert small / total > 0.2  # many objects are smaller than one 28-px token cell, as lesions are


def test_scan_objects_lie_in_their_canvas_region_and_stand_out_from_it():
    from clinkd.pretrain.corpus import luminance_of, scan_canvas

    for index in range(16):
        scene = draw_scene(scene_rng(5, "heldout", index), 112, 3, SCAN)
        canvas, _ = scan_canvas(scene_rng(5, "heldout", index), 112)  # the same draw: the scene's canvas
        assert not any((obj.mask & ~canvas.region).any() for obj in scene.objects)
        luminance = luminance_of(scene.pixels.transpose(2, 0, 1).astype(float) / 255)
        for obj in scene.objects:
            assert obj.name in SCAN.names
            x1, y1, x2, y2 = obj.pixel_box
            ring = np.zeros_like(obj.mask)
            ring[max(0, y1 - 3) : y2 + 3, max(0, x1 - 3) : x2 + 3] = True
            ring[y1:y2, x1:x2] = False
            ring &= canvas.region
            inside, around = luminance[obj.mask], luminance[ring]
            spreads = sorted([inside.std(), around.std()])
            assert abs(inside.mean() - around.mean()) > 0.04 or spreads[1] > 1.5 * spreads[0], (index, obj.name)


def test_the_scan_tokenizer_knows_medical_words_but_its_corpus_never_says_them():
    benchmark = {
        word
        for spec in MODALITY_SPECS.values()
        for cls in (*spec.structures, *spec.lesions)
        for word in cls.name.split()
    }
    assert benchmark <= set(MEDICAL_WORDS) | set(WORDS)
    assert " ".join(MEDICAL_WORDS) in tokenizer_texts(0, 112, 3, scenes=5, look=SCAN)
    assert " ".join(MEDICAL_WORDS) not in tokenizer_texts(0, 112, 3, scenes=5, look=TISSUE)


def test_the_curriculum_grows_the_objects_per_scene_from_one_to_max():
    assert [objects_allowed(step, 3, 4) for step in range(6)] == [1, 1, 2, 2, 3, 3]
    assert objects_allowed(0, 3, 0) == 3
    examples = stream(max_objects=3, curriculum_steps=4)  # batch 2: examples 0–3 are steps 0–1

    def objects(index):
        return len(examples.scene(index)[0].objects)

    assert {objects(index) for index in range(4)} == {1}
    assert {objects(index) for index in range(8, 80)} == {1, 2, 3}  # steps 4–39: U{1..3}


def hand_made_object(name: str, x1: int, y1: int, x2: int, y2: int) -> CorpusObject:
    mask = np.zeros((112, 112), dtype=bool)
    mask[y1:y2, x1:x2] = True
    appearance, shape = name.split(" ")
    return CorpusObject(appearance, shape, mask, (x1, y1, x2, y2), Box.from_pixels(x1, y1, x2, y2, 112, 112).rounded())


def test_dense_labels_of_a_hand_made_scene():
    big = hand_made_object("red square", 28, 0, 84, 28)  # fills cells (0, 1) and (0, 2)
    third = hand_made_object("blue cross", 0, 84, 28, 94)  # 10 of 28 rows of cell (3, 0): 36 % ≥ 25 %
    sliver = hand_made_object("white ring", 84, 84, 112, 89)  # 5 of 28 rows of cell (3, 3): 18 %, background
    labels = cell_labels(CorpusScene(np.zeros((112, 112, 3), np.uint8), (big, third, sliver)), (4, 4))
    expected = [0] * 16
    expected[1] = expected[2] = NAMES.index("red square") + 1
    expected[12] = NAMES.index("blue cross") + 1
    assert labels.names.tolist() == expected
    assert labels.rows.tolist() == [row for row in range(4) for _ in range(4)]
    assert labels.columns.tolist() == list(range(4)) * 4
    assert labels.boxes[1].tolist() == pytest.approx([0.25, 0.0, 0.75, 0.25])
    assert labels.boxes[12].tolist() == pytest.approx([0.0, 0.75, 0.25, 0.839])


@pytest.fixture()
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_pretrain_writes_a_loadable_base_resumes_and_reports_held_out_recall(tmp_path, one_thread):
    from clinkd.model.loading import load_checkpoint

    out = tmp_path / "base"
    command = [
        *tiny_pretrain(out, steps=4, dense_steps=3, eval_scenes=4),
        "pretrain.save_steps=2",
        "pretrain.eval_steps=2",
        "train.save_total_limit=5",
        "predict.max_new_tokens.VG=8",
    ]
    runner = CliRunner()
    first = runner.invoke(app, command)
    assert first.exit_code == 0, first.output
    record = json.loads((out / "pretrain.json").read_text())
    assert record["steps"] == {"dense": 3, "language": 4}
    assert 0 <= record["heldout"]["recall"] <= 1 and record["heldout"]["scenes"] == 4
    assert [row["step"] for row in record["heldout_curve"]] == [2, 4]
    model, processor = load_checkpoint(out / "model")
    assert (
        sum(p.numel() for p in model.parameters()) == record["model"]["parameters"] and len(processor.tokenizer) == 400
    )
    dense, final = load_file(out / "dense/model/model.safetensors"), load_file(out / "model/model.safetensors")
    vision = [name for name in final if name.startswith("visual.")]
    assert vision and all(torch.equal(dense[name], final[name]) for name in vision)  # frozen in the language stage
    assert not torch.equal(dense["model.embed_tokens.weight"], final["model.embed_tokens.weight"])

    last = out / "language/checkpoints/checkpoint-4/model.safetensors"
    trained = load_file(last)
    shutil.rmtree(last.parent)
    shutil.rmtree(out / "model")
    resumed = runner.invoke(app, command)  # as if killed after checkpoint 2
    assert resumed.exit_code == 0, resumed.output
    assert "dense: reusing" in resumed.output and "resuming from checkpoint 2" in resumed.output
    again = load_file(last)
    assert all(torch.equal(trained[name], again[name]) for name in trained)  # the same scenes, the same weights
    assert (out / "model/config.json").is_file()


def test_unfreeze_after_lets_the_vision_tower_train_from_that_step(tmp_path, one_thread):
    out = tmp_path / "base"
    command = [*tiny_pretrain(out), "pretrain.unfreeze_after=1"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    dense, final = load_file(out / "dense/model/model.safetensors"), load_file(out / "model/model.safetensors")
    assert not torch.equal(dense["visual.merger.mlp.2.weight"], final["visual.merger.mlp.2.weight"])


def test_a_tissue_pretrain_learns_the_tissue_names(tmp_path, one_thread):
    out = tmp_path / "tissue"
    result = CliRunner().invoke(app, [*tiny_pretrain(out), "pretrain.look=tissue"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "pretrain.json").read_text())
    assert record["names"] == list(TISSUE.names) and record["settings"]["look"] == "tissue"
    assert record["dense_heads"]["cells"] > 0


# ---- the retrieval-attention loss ----
def test_cell_weights_are_the_box_share_of_each_cell_in_raster_order():
    from clinkd.losses.retrieval import cell_weights

    assert cell_weights((0, 0, 500, 500), 2, 2).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert cell_weights((250, 250, 750, 750), 2, 2).tolist() == [0.25, 0.25, 0.25, 0.25]
    quarter_column = cell_weights((0, 0, 250, 500), 4, 4).view(4, 4)
    assert quarter_column[:2, 0].tolist() == [0.5, 0.5] and quarter_column.sum() == 1 and quarter_column[2:].sum() == 0
    assert torch.allclose(cell_weights((0, 0, 1000, 250), 4, 4), torch.tensor([0.25] * 4 + [0.0] * 12))
    assert cell_weights((600, 100, 600, 100), 2, 2).tolist() == [0.0, 1.0, 0.0, 0.0]  # no area: the centre's cell
    assert cell_weights((0, 0, 56, 28), 2, 2, scale=(112, 56)).tolist() == [
        1.0,
        0.0,
        0.0,
        0.0,
    ]  # pixels of a 112×56 image


def test_attention_target_loss_is_the_kl_of_the_box_cells_to_the_head():
    from clinkd.losses.retrieval import attention_target_loss

    target = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0]])
    uniform = torch.full((2, 4), 0.25)
    assert attention_target_loss(uniform, target, eps=0).item() == pytest.approx((np.log(4) + np.log(2)) / 2)
    assert attention_target_loss(target.clone(), target, eps=0).item() == 0
    elsewhere = torch.tensor([[0.5, 0.5, 0.0, 0.0]])  # half the mass off the image counts as missed
    assert attention_target_loss(elsewhere, target[:1], eps=0).item() == pytest.approx(np.log(2))
    assert attention_target_loss(torch.zeros(0, 4), torch.zeros(0, 4)).item() == 0


def test_retrieval_rows_point_each_box_writing_position_at_the_cells_of_its_box(tiny_processor, tiny_model, tmp_path):
    from clinkd.batching import ChatExample, TrainCollator
    from clinkd.data.records import Turn
    from clinkd.engine.retrieval_supervision import RetrievalTargets

    image = tmp_path / "scene.png"
    Image.new("RGB", (112, 112), (20, 20, 20)).save(image)
    examples = [
        ChatExample(
            image, (Turn("Where is the <ref>red ring</ref>?", "<ref>red ring</ref><box>(0,0),(250,500)</box>"),)
        ),
        ChatExample(image, (Turn("What is in <box>(0,0),(250,500)</box>?", "red ring"),)),  # a box in the question only
    ]
    batch = TrainCollator(tiny_processor)(examples)
    rows = RetrievalTargets.for_model(tiny_model, tiny_processor)(
        batch["input_ids"], batch["labels"], batch["image_grid_thw"]
    )
    ids = batch["input_ids"][0]
    start = (ids == tiny_processor.tokenizer.convert_tokens_to_ids("<|box_start|>")).nonzero().item()
    end = (ids == tiny_processor.tokenizer.convert_tokens_to_ids("<|box_end|>")).nonzero().item()
    assert rows.example.tolist() == [0] * (end - start) and rows.query.tolist() == list(range(start, end))
    image_positions = (ids == tiny_model.config.image_token_id).nonzero().flatten()
    expected = torch.zeros(ids.shape[0])
    expected[image_positions[[0, 4]]] = 0.5  # the left column's top two cells of the 4×4 grid
    assert all(torch.equal(row, expected) for row in rows.targets)


def test_the_retrieval_loss_trains_its_head_to_look_at_the_box(tiny_processor, tiny_model, tmp_path):
    from clinkd.batching import ChatExample, TrainCollator
    from clinkd.data.records import Turn
    from clinkd.engine.retrieval_supervision import RetrievalTargets, captured_attention, retrieval_loss

    image = tmp_path / "scene.png"
    Image.new("RGB", (112, 112), (20, 20, 20)).save(image)
    example = ChatExample(
        image, (Turn("Where is the <ref>ring</ref>?", "<ref>ring</ref><box>(750,750),(1000,1000)</box>"),)
    )
    batch = TrainCollator(tiny_processor)([example])
    tiny_model.set_attn_implementation("eager")
    rows = RetrievalTargets.for_model(tiny_model, tiny_processor)(
        batch["input_ids"], batch["labels"], batch["image_grid_thw"]
    )
    optimiser = torch.optim.AdamW(tiny_model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        with captured_attention(tiny_model, -1, 1) as attention:
            tiny_model(**batch)
        loss = retrieval_loss(attention[0], rows)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    cell = (batch["input_ids"][0] == tiny_model.config.image_token_id).nonzero().flatten()[15]  # bottom-right cell
    assert attention[0][0, rows.query, cell].mean() > 0.5


def test_pretrain_with_the_retrieval_loss_logs_it_and_saves_an_sdpa_base(tmp_path, one_thread):
    out = tmp_path / "base"
    command = [
        *tiny_pretrain(out),
        "train.retrieval_loss=1",
        "train.logging_steps=1",
        "pretrain.tasks.grounding=1",
        "pretrain.tasks.referring=0",
        "pretrain.tasks.counting=0",
        "pretrain.tasks.captioning=0",
    ]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert re.search(r"'retrieval_loss': '[0-9.]+'", result.output)
    assert json.loads((out / "model/config.json").read_text()).get("_attn_implementation") in (None, "sdpa")
    bad = CliRunner().invoke(
        app, [*command[:1], f"pretrain.out={tmp_path / 'bad'}", *command[2:], "train.retrieval_layer=9"]
    )
    assert bad.exit_code != 0 and "train.retrieval_layer" in bad.output


# ---- the shipped base (model.init: base) ----
def test_a_shipped_base_has_its_card_and_checksum_and_model_init_base_starts_from_it(tmp_path, one_thread, monkeypatch):
    from clinkd.config import ConfigError, RecipeConfig
    from clinkd.model import bases
    from clinkd.recipes.distill import teacher_recipe
    from clinkd.recipes.inputs import initial_checkpoint, initial_model

    shipped = tmp_path / "bases" / "xs"
    command = [*tiny_pretrain(tmp_path / "run"), "--ship-to", str(shipped)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    record = json.loads((shipped / "base.json").read_text())
    assert record["sha256"] == bases.file_sha256(shipped / "model.safetensors") and record["steps"] == {
        "dense": 1,
        "language": 2,
    }
    assert all(tensor.dtype == torch.bfloat16 for tensor in load_file(shipped / "model.safetensors").values())
    card = (shipped / "README.md").read_text()
    assert record["sha256"] in card and f"clinkd pretrain {shipped}/pretrain.yaml" in card and "torch_threads 1" in card
    assert "| retrieval loss | loss 1.0, layer -2, head 0 |" in card and "| visual tokens | 64 per image" in card
    assert "model:\n" in (shipped / "pretrain.yaml").read_text()

    monkeypatch.setattr(bases, "BASES_DIR", shipped.parent)
    cfg = RecipeConfig(model={"init": "base", "size": "xs"})
    assert initial_checkpoint(cfg.model) == shipped and teacher_recipe(cfg).model.path == shipped
    model, processor = initial_model(cfg, [])
    trained = load_file(tmp_path / "run/model/model.safetensors")
    assert model.dtype == torch.float32 and len(processor.tokenizer) == 400
    embeddings = model.state_dict()["model.language_model.embed_tokens.weight"]
    assert torch.equal(embeddings, trained["model.embed_tokens.weight"].to(torch.bfloat16).float())
    with pytest.raises(ValueError, match="model.init: no shipped base for model.size 's'"):
        RecipeConfig(model={"init": "base", "size": "s"})
    (shipped / "model.safetensors").write_bytes(
        b"version https://git-lfs.github.com/spec/v1\n"
    )  # what a Git LFS checkout leaves
    with pytest.raises(ConfigError, match="model.init: .* is not the recorded"):
        initial_checkpoint(cfg.model)


def test_the_shipped_base_matches_its_record_and_loads():
    from clinkd.config import RecipeConfig
    from clinkd.model.loading import load_checkpoint
    from clinkd.recipes.inputs import initial_checkpoint

    folder = initial_checkpoint(RecipeConfig(model={"init": "base"}).model)  # checks the sha256
    record = json.loads((folder / "base.json").read_text())
    model, processor = load_checkpoint(folder)
    assert sum(p.numel() for p in model.parameters()) == record["model"]["parameters"]
    assert len(processor.tokenizer) == record["model"]["tokenizer_vocab"] and record["heldout"]["scenes"] > 0
    assert set(record["names"]) == set(LOOKS[record["settings"]["look"]].names)  # the corpus the corpus tests check
    image_processor = processor.image_processor  # a run from the base keeps its 64 tokens by default (model.min_pixels)
    assert image_processor.size["longest_edge"] == record["pixels"]["max"] == RecipeConfig().model.max_pixels
