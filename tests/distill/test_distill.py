"""Distillation stage: teacher subset, pseudo labels (resume), the teacher cache (exactness, refusal, resume),
the KDTrainer's loss against a direct computation, shared position ids, vocabulary slicing, and the whole stage."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from clinkd.batching import InputFormat, TrainCollator, training_examples
from clinkd.boxes import convert_markup
from clinkd.config import DistillConfig, PredictConfig, RecipeConfig, TrainConfig
from clinkd.data.medgrit import load_medgrit
from clinkd.data.records import Sample, Turn
from clinkd.distill import (
    CacheMismatchError,
    CacheSpec,
    IndexedCollator,
    IndexedExample,
    KDTrainer,
    PseudoChecks,
    PseudoLabel,
    TeacherCache,
    aligned_pseudo_labels,
    check_teacher_vocab,
    curriculum_order,
    dataset_fingerprint,
    distillation_examples,
    generate_pseudo_labels,
    pseudo_problem,
    read_pseudo_labels,
    seeded_subset,
    teacher_fingerprint,
    tokenizer_fingerprint,
    write_teacher_cache,
)
from clinkd.distill import pseudo as pseudo_module
from clinkd.distill.batches import model_inputs
from clinkd.distill.pseudo import DROP_REASONS
from clinkd.distill.report import render_distill
from clinkd.distill.teacher_cache import MANIFEST
from clinkd.engine.generate import answer_margins
from clinkd.engine.sft import SftSettings, training_arguments
from clinkd.losses import KDLossConfig, distillation_loss
from clinkd.model.box_convention import RelativeBoxes
from clinkd.model.loading import CheckpointError, model_class_for, save_checkpoint
from clinkd.model.positions import PAPER, STOCK
from clinkd.model.processor import build_processor
from clinkd.model.rope import set_rope_strategy
from clinkd.model.tiny import tiny_config
from clinkd.model.tokenizer import train_tokenizer
from clinkd.recipes.distill import run_distill, teacher_recipe
from clinkd.recipes.inputs import build_tiny_from
from clinkd.synth import generate

BOX_STYLE = "qwen2-vl"


@pytest.fixture(scope="module")
def train_records(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, images=16, test_per_cell=1)
    return load_medgrit(root / "train.json", root / "images")


@pytest.fixture(scope="module")
def corpus(train_records):
    return [
        convert_markup(text, BOX_STYLE)
        for s in train_records
        for turn in s.turns
        for text in (turn.question, turn.answer)
    ]


@pytest.fixture(scope="module")
def processor(corpus):
    return build_processor(train_tokenizer(corpus, vocab_size=400), 112 * 112, 112 * 112)


@pytest.fixture(scope="module")
def examples(train_records):
    return training_examples(train_records, "split")


def tiny_model(processor, size: str, seed: int = 0, vocab_size: int | None = None, rope=PAPER):
    config = tiny_config(processor.tokenizer, size)
    if vocab_size is not None:
        config.text_config.vocab_size = vocab_size
    set_rope_strategy(config, rope)
    torch.manual_seed(seed)
    return model_class_for(config)(config).eval()


def vocab(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def kd_trainer(tmp_path, model, processor, kd_config, **teacher_source) -> KDTrainer:
    cfg = RecipeConfig(output_dir=tmp_path, train={"batch_size": 3})
    return KDTrainer(
        model=model,
        args=training_arguments(SftSettings.of(cfg), tmp_path / "checkpoints"),
        data_collator=IndexedCollator(processor),
        kd_config=kd_config,
        **teacher_source,
    )


def indexed_batch(processor, examples, indices):
    return IndexedCollator(processor)([IndexedExample(i, examples[i]) for i in indices])


def make_spec(
    examples, processor, student, k: int, kd_config: KDLossConfig, teacher_id: str = "teacher-a"
) -> CacheSpec:
    return CacheSpec(
        dataset_sha256=dataset_fingerprint(
            examples, InputFormat(BOX_STYLE), processor.image_processor.size, RelativeBoxes()
        ),
        n_examples=len(examples),
        tokenizer_sha256=tokenizer_fingerprint(processor.tokenizer),
        teacher_sha256=teacher_id,
        vocab_size=vocab(student),
        top_k=k,
        temperature=kd_config.temperature,
        shift_labels=kd_config.shift_labels,
        ignore_index=kd_config.ignore_index,
        positions=PAPER.to_dict(),
    )


# --- teacher subset and loss configuration -------------------------------------------------------


def test_seeded_subset_is_of_the_right_size_and_deterministic():
    subset = seeded_subset(1600, 0.111, seed=0)
    assert len(subset) == 178 and subset == sorted(set(subset)) and 0 <= subset[0] and subset[-1] < 1600
    assert seeded_subset(1600, 0.111, seed=0) == subset
    assert seeded_subset(1600, 0.111, seed=1) != subset
    assert seeded_subset(10, 1.0, seed=3) == list(range(10))
    assert len(seeded_subset(3, 0.01, seed=0)) == 1  # never empty
    with pytest.raises(ValueError, match="distill.pseudo_fraction must be in"):
        seeded_subset(10, 0.0, seed=0, key="distill.pseudo_fraction")


def test_the_kd_loss_takes_the_preset_and_applies_set_fields():
    assert DistillConfig().loss == KDLossConfig.paper()
    assert DistillConfig(preset="clinkd-official").loss == KDLossConfig.clinkd_official()
    assert (
        DistillConfig(preset="clinkd-official", temperature=None).loss == KDLossConfig.clinkd_official()
    )  # null: the preset's
    official_ce = DistillConfig(preset="clinkd-official", use_ce=True, chunk_size=64).loss
    assert official_ce == KDLossConfig.clinkd_official(use_ce=True, chunk_size=64)
    assert (official_ce.temperature, official_ce.t_squared, official_ce.reduction, official_ce.shift_labels) == (
        0.5,
        False,
        "sum",
        False,
    )
    jsd = DistillConfig(divergence="jsd", jsd_beta=0.3, temperature=1.0).loss
    assert (jsd.divergence, jsd.jsd_beta, jsd.temperature, jsd.t_squared) == ("jsd", 0.3, 1.0, True)


def test_teacher_recipe_changes_only_the_teacher_init_and_epochs(tmp_path):
    cfg = RecipeConfig(
        model={"init": "scratch", "size": "xs"},
        train={"epochs": 3, "lr": 5e-4},
        distill={"teacher_size": "s", "teacher_epochs": 6},
    )
    tuned = teacher_recipe(cfg)
    assert (tuned.model.size, tuned.train.epochs, tuned.train.lr) == ("s", 6, 5e-4)
    assert (
        teacher_recipe(RecipeConfig(train={"epochs": 2}, distill={"teacher_epochs": None})).train.epochs == 2
        and cfg.model.size == "xs"
    )
    from_checkpoint = teacher_recipe(
        RecipeConfig(model={"path": str(tmp_path), "size": "xs"}, distill={"teacher_size": "s"})
    )
    assert (from_checkpoint.model.path, from_checkpoint.model.size) == (tmp_path, "xs")
    larger = tmp_path / "teacher-7b"
    from_larger = teacher_recipe(RecipeConfig(model={"path": str(tmp_path)}, distill={"teacher_init": str(larger)}))
    assert (from_larger.model.path, from_larger.model.size) == (larger, "s")


# --- KDTrainer ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kd_config", [KDLossConfig.paper(), KDLossConfig.clinkd_official(use_ce=True)], ids=["paper", "official"]
)
def test_kdtrainer_loss_equals_a_direct_computation(tmp_path, processor, examples, kd_config):
    student, teacher = tiny_model(processor, "xs"), tiny_model(processor, "xs", seed=1)
    trainer = kd_trainer(tmp_path, student, processor, kd_config, teacher=teacher)
    batch = indexed_batch(processor, examples, [5, 0, 9])
    loss = trainer.compute_loss(student, batch)
    # Direct: each model computes its own positions from the same input ids (same strategy).
    with torch.no_grad():
        outputs = student(**model_inputs(batch), labels=batch["labels"])
        teacher_logits = teacher(**model_inputs(batch)).logits
    expected = distillation_loss(
        outputs.logits, batch["labels"], outputs.loss, kd_config, teacher_logits=teacher_logits
    )
    torch.testing.assert_close(loss, expected["loss"], rtol=0, atol=1e-6)
    assert teacher.training is False and not any(p.requires_grad for p in teacher.parameters())


def test_kdtrainer_mean_is_over_the_tokens_of_the_whole_accumulated_step(tmp_path, processor, examples):
    student, teacher = tiny_model(processor, "xs"), tiny_model(processor, "xs", seed=1)
    trainer = kd_trainer(tmp_path, student, processor, KDLossConfig.paper(), teacher=teacher)
    batch = indexed_batch(processor, examples, [1, 2])
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    per_call = trainer.compute_loss(student, batch)
    one_step = trainer.compute_loss(student, batch, num_items_in_batch=torch.tensor(tokens))
    half_of_a_step = trainer.compute_loss(student, batch, num_items_in_batch=torch.tensor(2 * tokens))
    torch.testing.assert_close(one_step, per_call, rtol=1e-6, atol=0)
    torch.testing.assert_close(half_of_a_step, per_call / 2, rtol=1e-6, atol=0)
    assert trainer.loss_is_scaled_for_ga is True  # Trainer must not divide by the accumulation steps again


def test_teacher_sees_exactly_the_students_position_ids(tmp_path, processor, examples):
    # A teacher recorded with another strategy still gets the student's positions, not its own.
    student, teacher = tiny_model(processor, "xs"), tiny_model(processor, "xs", seed=1, rope=STOCK)
    seen = {}
    student.register_forward_pre_hook(
        lambda m, a, kw: seen.__setitem__("student", kw["position_ids"]), with_kwargs=True
    )
    teacher.register_forward_pre_hook(
        lambda m, a, kw: seen.__setitem__("teacher", kw["position_ids"]), with_kwargs=True
    )
    batch = indexed_batch(processor, examples, [3, 4])
    kd_trainer(tmp_path, student, processor, KDLossConfig.paper(), teacher=teacher).compute_loss(student, batch)
    own, _ = student.model.get_rope_index(
        batch["input_ids"], batch["mm_token_type_ids"], batch["image_grid_thw"], attention_mask=batch["attention_mask"]
    )
    assert torch.equal(seen["student"], seen["teacher"]) and torch.equal(seen["student"], own)
    assert seen["student"].dtype == torch.float32  # mcg positions are fractional: the strategy really applied


def test_wider_teacher_vocabulary_is_sliced_with_a_logged_check(tmp_path, processor, examples, caplog):
    student = tiny_model(processor, "xs")
    teacher = tiny_model(processor, "xs", seed=1, vocab_size=vocab(student) + 8)
    with caplog.at_level(logging.WARNING, logger="clinkd.distill.trainer"):
        assert check_teacher_vocab(vocab(teacher), vocab(student), len(processor.tokenizer)) is True
    assert f"teacher vocabulary {vocab(teacher)} > student's {vocab(student)}" in caplog.text
    assert check_teacher_vocab(vocab(student), vocab(student), len(processor.tokenizer)) is False
    with pytest.raises(ValueError, match="drop real tokens"):
        check_teacher_vocab(vocab(student) + 8, vocab(student) - 1, vocab(student))
    with pytest.raises(ValueError, match="narrower"):
        check_teacher_vocab(vocab(student) - 1, vocab(student), vocab(student) - 1)

    cfg = KDLossConfig.paper()
    batch = indexed_batch(processor, examples, [2, 7])
    loss = kd_trainer(tmp_path, student, processor, cfg, teacher=teacher).compute_loss(student, batch)
    with torch.no_grad():
        outputs = student(**model_inputs(batch), labels=batch["labels"])
        sliced = teacher(**model_inputs(batch)).logits[..., : vocab(student)]
    expected = distillation_loss(outputs.logits, batch["labels"], outputs.loss, cfg, teacher_logits=sliced)["loss"]
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)


# --- teacher cache -----------------------------------------------------------------------------


@pytest.mark.parametrize("wider_teacher", [False, True], ids=["same-vocab", "wider-teacher"])
@pytest.mark.parametrize(
    "kd_config", [KDLossConfig.paper(), KDLossConfig.clinkd_official(use_ce=True)], ids=["paper", "official"]
)
def test_cached_topk_with_k_equal_to_the_vocabulary_equals_the_online_loss(
    tmp_path, processor, examples, kd_config, wider_teacher
):
    student = tiny_model(processor, "xs")
    teacher = tiny_model(processor, "xs", seed=1, vocab_size=vocab(student) + 8 if wider_teacher else None)
    subset = examples[:7]
    spec = make_spec(subset, processor, student, k=vocab(student), kd_config=kd_config)
    # Cache batches (4, 3) differ from the training batch: rows must still line up per example.
    write_teacher_cache(
        teacher, TrainCollator(processor), subset, spec, tmp_path / "cache", kd_config, batch_size=4, shard_examples=3
    )
    cache = TeacherCache(tmp_path / "cache", spec)
    batch = indexed_batch(processor, subset, [6, 0, 4])
    cached = kd_trainer(tmp_path, student, processor, kd_config, teacher_cache=cache).compute_loss(student, batch)
    online = kd_trainer(tmp_path, student, processor, kd_config, teacher=teacher).compute_loss(student, batch)
    torch.testing.assert_close(cached, online, rtol=0, atol=1e-5)


@pytest.fixture()
def written_cache(tmp_path, processor, examples):
    """A small complete cache (k = 8) and its spec, examples and models."""
    student, teacher = tiny_model(processor, "xs"), tiny_model(processor, "xs", seed=1)
    cfg = KDLossConfig.paper()
    subset = examples[:5]
    spec = make_spec(subset, processor, student, k=8, kd_config=cfg)
    write_teacher_cache(
        teacher, TrainCollator(processor), subset, spec, tmp_path / "cache", cfg, batch_size=2, shard_examples=2
    )
    return tmp_path / "cache", spec, subset, student, teacher


def test_a_cache_for_other_data_tokenizer_or_k_is_refused(written_cache, processor):
    cache_dir, spec, subset, student, _ = written_cache
    changed = [replace(subset[0], turns=(Turn(subset[0].turns[0].question, "something else"),)), *subset[1:]]
    other_tokenizer = train_tokenizer(["a completely different corpus of words"] * 20, vocab_size=300)
    variants = {
        "dataset_sha256": replace(
            spec,
            dataset_sha256=dataset_fingerprint(
                changed, InputFormat(BOX_STYLE), processor.image_processor.size, RelativeBoxes()
            ),
        ),
        "tokenizer_sha256": replace(spec, tokenizer_sha256=tokenizer_fingerprint(other_tokenizer)),
        "top_k": replace(spec, top_k=16),
        "temperature": replace(spec, temperature=0.5),
    }
    for key, other in variants.items():
        assert getattr(other, key) != getattr(spec, key)
        with pytest.raises(CacheMismatchError, match=f"{key}: cache") as error:
            TeacherCache(cache_dir, other)
        assert str(cache_dir / MANIFEST) in str(error.value) and "distill.cache_dir" in str(error.value)
    TeacherCache(cache_dir, spec)  # the matching spec still reads


def test_fingerprints_follow_the_weights_and_ignore_padding_state(tmp_path, processor):
    model_a, model_b = tiny_model(processor, "xs"), tiny_model(processor, "xs", seed=1)
    save_checkpoint(model_a, processor, tmp_path / "a")
    save_checkpoint(model_b, processor, tmp_path / "b")
    assert teacher_fingerprint(tmp_path / "a") != teacher_fingerprint(tmp_path / "b")
    assert teacher_fingerprint(tmp_path / "a") == teacher_fingerprint(tmp_path / "a")
    before = tokenizer_fingerprint(processor.tokenizer)
    processor.tokenizer(["a", "a b c"], padding=True)  # sets the backend's padding state
    assert tokenizer_fingerprint(processor.tokenizer) == before


def test_an_interrupted_cache_resumes_at_the_first_missing_shard(written_cache, processor):
    cache_dir, spec, subset, student, teacher = written_cache
    complete = TeacherCache(cache_dir, spec).rows(range(5))
    manifest = json.loads((cache_dir / MANIFEST).read_text())
    manifest["complete"], manifest["shards"] = False, manifest["shards"][:1]  # killed after shard 0
    (cache_dir / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CacheMismatchError, match="incomplete"):
        TeacherCache(cache_dir, spec)
    seen = []
    teacher.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[0]), with_kwargs=True)
    write_teacher_cache(
        teacher, TrainCollator(processor), subset, spec, cache_dir, KDLossConfig.paper(), batch_size=2, shard_examples=4
    )
    assert sum(seen) == 3  # examples 2..4 only; the manifest's shard size (2) wins over the new argument
    resumed = TeacherCache(cache_dir, spec).rows(range(5))
    assert all(torch.equal(a, b) for a, b in zip(resumed, complete))


def test_cached_row_counts_are_checked_per_example(tmp_path, written_cache, processor, examples):
    cache_dir, spec, subset, student, _ = written_cache
    trainer = kd_trainer(
        tmp_path, student, processor, KDLossConfig.paper(), teacher_cache=TeacherCache(cache_dir, spec)
    )
    cached_rows = TeacherCache(cache_dir, spec).row_count(0)

    def answer_rows(example) -> int:
        return int((IndexedCollator(processor)([IndexedExample(0, example)])["labels"][:, 1:] != -100).sum())

    # another example under index 0, one whose answer has another length than the cached one
    mismatched = next(example for example in examples if answer_rows(example) != cached_rows)
    batch = IndexedCollator(processor)([IndexedExample(0, mismatched)])
    with pytest.raises(ValueError, match="example 0 has .* cached answer rows"):
        trainer.compute_loss(student, batch)


# --- pseudo labels -----------------------------------------------------------------------------


def test_pseudo_label_generation_resumes_after_an_interruption(tmp_path, processor, train_records, monkeypatch):
    teacher = tiny_model(processor, "xs", seed=2)
    records = train_records[:3]
    predict_cfg = PredictConfig(batch_size=4)
    reference = generate_pseudo_labels(teacher, processor, records, tmp_path / "full", predict_cfg, max_new_tokens=3)
    expected = read_pseudo_labels(tmp_path / "full", records)
    assert len(expected) == sum(len(s.turns) for s in records)

    out = tmp_path / "resumed"
    out.mkdir()
    lines = reference.read_text().splitlines(keepends=True)
    (out / reference.name).write_text("".join(lines[:5]))  # interrupted after 5 rows
    prompts = []
    real = pseudo_module.generate_with_margins
    monkeypatch.setattr(pseudo_module, "generate_with_margins", lambda *a: prompts.append(len(a[3])) or real(*a))
    generate_pseudo_labels(teacher, processor, records, out, predict_cfg, max_new_tokens=3)
    assert sum(prompts) == len(expected) - 5
    resumed = read_pseudo_labels(out, records)
    assert [label.answer for label in resumed] == [label.answer for label in expected]
    # Greedy labels carry their margin; another batch (its padding) may move it in the last float digits.
    assert [label.margin for label in resumed] == pytest.approx([label.margin for label in expected], abs=1e-5)
    assert all(0 <= label.margin <= 1 for label in expected)


def test_pseudo_labels_for_other_data_are_refused(tmp_path, processor, train_records):
    teacher = tiny_model(processor, "xs", seed=2)
    generate_pseudo_labels(
        teacher, processor, train_records[:2], tmp_path, PredictConfig(batch_size=8), max_new_tokens=2
    )
    with pytest.raises(ValueError, match="row 0 is for record"):
        read_pseudo_labels(tmp_path, train_records[2:4])


def test_distillation_examples_for_each_target_kind(train_records):
    records = train_records[:3]
    assert [len(s.turns) for s in records] == [4, 4, 4]
    gt = [turn.answer for s in records for turn in s.turns]
    # Records 0 and 2 were pseudo-labelled (turns 0-3 and 8-11); record 1 was not.
    answers = ["teacher says liver", "", "<|box_start|>(1,2<|box_end|>", convert_markup(gt[3], BOX_STYLE)]
    answers += ["teacher answer 8", gt[9], "teacher answer 10", "teacher answer 11"]
    labels = [PseudoLabel(answer, 0.1 * index) for index, answer in enumerate(answers)]
    pseudo = aligned_pseudo_labels(records, [0, 2], labels)
    assert pseudo == labels[:4] + [None] * 4 + labels[4:]

    def answers_of(examples):
        return [example.turns[0].answer for example in examples]

    ground = distillation_examples(records, None, "ground_truth", "split", BOX_STYLE)
    assert answers_of(ground.examples) == gt and ground.counts["pseudo_labelled"] == 0 and ground.margins == [None] * 12

    relabelled = distillation_examples(records, pseudo, "pseudo", "split", BOX_STYLE)
    # Empty and unparseable answers fall back to the GT; an answer equal up to markup keeps the GT text.
    teacher_answers = ["teacher says liver", "teacher answer 8", "teacher answer 10", "teacher answer 11"]
    expected = ["teacher says liver", *gt[1:8], "teacher answer 8", gt[9], "teacher answer 10", "teacher answer 11"]
    assert answers_of(relabelled.examples) == expected
    assert relabelled.counts == {
        "examples": 12,
        "pseudo_labelled": 8,
        "pseudo_dropped_unusable": 2,
        "pseudo_dropped_wrong_structure": 0,
        "pseudo_dropped_no_box": 0,
        "pseudo_dropped_low_confidence": 0,
        "pseudo_equal_gt": 2,
        "pseudo_used": 4,
    }
    assert relabelled.margins == pytest.approx([0.0, None, None, None, None, None, None, None, 0.4, None, 0.6, 0.7])

    both = distillation_examples(records, pseudo, "both", "split", BOX_STYLE)
    assert answers_of(both.examples) == gt + teacher_answers and both.counts["examples"] == 16
    assert both.margins == pytest.approx([None] * 12 + [0.0, 0.4, 0.6, 0.7])

    multi = distillation_examples(records, pseudo, "pseudo", "multi", BOX_STYLE)
    ground_multi = distillation_examples(records, None, "ground_truth", "multi", BOX_STYLE)
    assert [t.answer for t in multi.examples[0].turns] == expected[:4] and multi.examples[1] == ground_multi.examples[1]
    assert multi.margins == [0.0, None, pytest.approx(17 / 30)]  # the mean margin of a record's used labels
    with pytest.raises(ValueError, match="one pseudo-label entry per training turn"):
        distillation_examples(records, pseudo[:-1], "both", "split", BOX_STYLE)


def test_pseudo_labels_that_name_another_structure_lack_a_box_or_doubt_themselves_do_not_teach():
    image = Path("ct_0.png")
    turns = [
        Turn("Where is the <ref>liver</ref>?", "<ref>liver</ref><box>(100,100),(400,400)</box>"),
        Turn("What is in <box>(100,100),(400,400)</box>?", "liver"),
        Turn("Describe <box>(100,100),(400,400)</box>.", "The liver appears large and bright in the left region."),
        Turn("What can you diagnose from this image?", "CT image of the abdomen showing the liver and kidney."),
    ]
    record = Sample("ct_0", image, "ct", turns)
    checks = PseudoChecks(classes={"ct": {"liver", "kidney", "spleen"}}, min_margin=0.5)

    def problems(*answers, margin=0.9):
        return [
            pseudo_problem(turn, PseudoLabel(answer, margin), "ct", BOX_STYLE, checks)
            for turn, answer in zip(turns, answers)
        ]

    good = (
        "<ref>liver</ref><box>(110,90),(400,420)</box>",
        "liver",
        "The liver appears large in the left region.",
        "CT image of the abdomen showing the liver.",
    )
    assert problems(*good) == [None] * 4
    assert (
        problems(
            "<ref>spleen</ref><box>(110,90),(400,420)</box>",
            "kidney",
            "The spleen appears bright.",
            "CT image showing the liver and spleen.",
        )
        == ["wrong_structure"] * 4
    )
    assert problems("<ref>liver</ref> is on the left", *good[1:]) == ["no_box", None, None, None]
    assert problems(*good, margin=0.4) == ["low_confidence"] * 4
    assert pseudo_problem(turns[1], PseudoLabel("kidney", None), "ct", BOX_STYLE, PseudoChecks(filter=False)) is None
    assert (
        pseudo_problem(
            turns[1], PseudoLabel("kidney", None), "ct", BOX_STYLE, PseudoChecks(filter=False, min_margin=0.1)
        )
        == "low_confidence"
    )

    labels = [
        PseudoLabel(answer, 0.9) for answer in ("<ref>spleen</ref><box>(1,1),(9,9)</box>", "kidney", good[2], good[3])
    ]
    targets = distillation_examples([record], labels, "both", "split", BOX_STYLE, checks)
    assert [example.turns[0].answer for example in targets.examples[4:]] == [good[2], good[3]]
    assert targets.counts["pseudo_dropped_wrong_structure"] == 2 and targets.counts["pseudo_used"] == 2


def test_answer_margins_average_top1_minus_top2_up_to_the_end_of_turn():
    logits = torch.log(
        torch.tensor(
            [
                [[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.9, 0.05, 0.05]],  # ends at step 1: steps 0 and 1 count
                [[0.6, 0.3, 0.1], [0.6, 0.3, 0.1], [0.6, 0.3, 0.1]],  # never ends: every step counts
            ]
        )
    )
    tokens = torch.tensor([[0, 2, 1], [0, 0, 0]])
    assert answer_margins(logits, tokens, end_id=2) == pytest.approx([(0.5 + 0.1) / 2, 0.3])


# --- the whole stage ---------------------------------------------------------------------------


def test_the_stage_runs_end_to_end_and_a_rerun_skips_every_sub_stage(tmp_path, train_records, corpus):
    cfg = RecipeConfig.model_validate(
        {
            "name": "distil",
            "output_dir": str(tmp_path),
            "model": {"init": "scratch", "size": "xs", "tokenizer_vocab": 400},
            "train": {"epochs": 1, "batch_size": 8, "logging_steps": 2, "save_steps": 1000, "threads": 1},
            "predict": {"batch_size": 16},
            "distill": {
                "teacher_fraction": 0.25,
                "pseudo_fraction": 0.5,
                "pseudo_max_new_tokens": 4,
                "targets": "both",
                "mode": "cached",
                "top_k": 16,
                "teacher_size": "xs",
                "teacher_epochs": 1,
            },
        }
    )
    built = []

    def build_model(recipe):
        built.append(recipe.model.size)
        return build_tiny_from(recipe.model, corpus, recipe.seed, recipe.rope)

    class Dataset:
        train = train_records[:8]

    student, _, info = run_distill(cfg, Dataset.train, cfg.run_dir, build_model)
    root = cfg.run_dir / "distill"
    subset = json.loads((root / "teacher" / "subset.json").read_text())["indices"]
    assert subset == seeded_subset(8, 0.25, cfg.seed) and len(subset) == 2
    assert info["teacher"]["examples"] == sum(len(Dataset.train[i].turns) for i in subset)
    labelled = seeded_subset(8, 0.5, cfg.seed + 1)
    n_turns = sum(len(Dataset.train[i].turns) for i in labelled)
    assert len((root / "pseudo" / "train.jsonl").read_text().splitlines()) == n_turns == info["pseudo"]["turns"]
    assert info["targets"]["pseudo_labelled"] == n_turns
    assert info["student"]["examples"] == info["targets"]["examples"] == 32 + info["targets"]["pseudo_used"]
    dropped = sum(info["targets"][f"pseudo_dropped_{reason}"] for reason in DROP_REASONS)
    assert dropped + info["targets"]["pseudo_equal_gt"] + info["targets"]["pseudo_used"] == n_turns
    assert set(info["pseudo"]["fidelity"]) == {"names_asked", "parseable_box", "modality_class"}
    assert all(
        0 <= label["margin"] <= 1
        for label in map(json.loads, (root / "pseudo" / "train.jsonl").read_text().splitlines())
    )
    manifest = json.loads((root / "cache" / MANIFEST).read_text())
    assert manifest["complete"] and manifest["spec"]["n_examples"] == info["student"]["examples"]
    assert (root / "student" / "model" / "config.json").is_file() and info["student"]["steps"] > 0
    history = json.loads((root / "student" / "train_log.json").read_text())["log_history"]
    assert any("kd" in entry and "ce" in entry for entry in history)
    assert built == ["xs", "xs"]

    built.clear()
    _, _, again = run_distill(cfg, Dataset.train, cfg.run_dir, build_model)
    assert built == []  # nothing rebuilt or retrained
    assert again["student"]["reused"] and again["student"]["steps"] == info["student"]["steps"]
    assert again["teacher"]["examples"] == info["teacher"]["examples"]


def test_a_teacher_with_another_tokenizer_is_refused(tmp_path, train_records, corpus):
    other = build_processor(
        train_tokenizer(["a completely different corpus of words"] * 20, vocab_size=300), 112 * 112, 112 * 112
    )
    save_checkpoint(tiny_model(other, "xs"), other, tmp_path / "teacher")
    cfg = RecipeConfig(
        output_dir=tmp_path,
        model={"init": "scratch", "size": "xs", "tokenizer_vocab": 400},
        distill={"teacher": str(tmp_path / "teacher"), "targets": "ground_truth", "mode": "online"},
    )

    class Dataset:
        train = train_records[:2]

    with pytest.raises(CheckpointError, match="tokenizer .* differs from the student's"):
        run_distill(
            cfg,
            Dataset.train,
            cfg.run_dir,
            lambda recipe: build_tiny_from(recipe.model, corpus, recipe.seed, recipe.rope),
        )


def test_the_curriculum_releases_pseudo_labels_from_the_most_confident_on():
    margins = [None] * 200 + [0.1, 0.9, 0.5, None]
    order = curriculum_order(margins, seed=3)
    assert sorted(order) == list(range(204)) and order == curriculum_order(margins, seed=3)
    position = {index: rank for rank, index in enumerate(order)}
    # The least confident label (release 2/3) comes after about two thirds of the ground truth.
    assert position[200] > 110
    assert all(margins[index] is None or margins[index] > 0.05 for index in order[:60])
    settings = SftSettings(TrainConfig(), 0, "float32", InputFormat(), Path("logs"), in_order=True)
    assert training_arguments(settings, Path("out")).train_sampling_strategy == "sequential"
    assert training_arguments(replace(settings, in_order=False), Path("out")).train_sampling_strategy == "random"


def test_the_distillation_section_says_what_became_of_the_pseudo_labels():
    info = {
        "targets": {
            "kind": "both",
            "examples": 120,
            "pseudo_labelled": 20,
            "pseudo_dropped_unusable": 1,
            "pseudo_dropped_wrong_structure": 6,
            "pseudo_dropped_no_box": 2,
            "pseudo_dropped_low_confidence": 0,
            "pseudo_equal_gt": 5,
            "pseudo_used": 6,
        },
        "pseudo": {
            "fidelity": {
                "names_asked": {"value": 0.5, "n": 8},
                "parseable_box": {"value": 0.75, "n": 8},
                "modality_class": {"value": None, "n": 0},
            }
        },
    }
    text = render_distill(info)
    assert (
        "| VG names the asked structure | 50.0 (8) |" in text and "| ROC answers a class of the modality | – |" in text
    )
    assert "| dropped: name another structure than their turn | 6 |" in text and "| used as extra targets | 6 |" in text
    assert "pseudo labels" not in render_distill(
        {"targets": {"kind": "ground_truth", "examples": 3, "pseudo_labelled": 0}}
    )
