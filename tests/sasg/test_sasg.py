"""SASG: candidates, CLIP scoring of views, calibration and choice, the embedded CLIP, and the wiring."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clinkd.boxes import Box
from clinkd.config import ClipTrainConfig, ConfigError, PredictConfig, SelectConfig
from clinkd.data.records import Sample, Turn
from clinkd.sasg import (
    Candidate,
    MedClipScorer,
    SasgSelector,
    ScorerError,
    answer_views,
    calibrate,
    choose,
    clip_text,
    crop,
    generate_candidates,
    load_scorer,
    score_candidates,
    select,
    sequence_logprobs,
)
from clinkd.sasg.clip_train import jittered, multi_positive_clip_loss
from clinkd.sasg.scorer import ImagePrep, encode_texts

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


class ColourScorer(MedClipScorer):
    """A CLIP stand-in with known answers: an image embeds as its mean RGB, a text as the colour words it names."""

    @property
    def logit_scale(self) -> float:
        return 10.0

    def embed_images(self, images):
        means = torch.tensor(
            np.stack([np.asarray(image, dtype=np.float32).reshape(-1, 3).mean(axis=0) for image in images])
        )
        return torch.nn.functional.normalize(means + 1e-6, dim=-1)

    def embed_texts(self, texts):
        rows = [[float(name in text) for name in COLOURS] for text in texts]
        return torch.nn.functional.normalize(torch.tensor(rows) + 1e-6, dim=-1)


def two_squares() -> Image.Image:
    """Red top-left quarter, blue bottom-right quarter, black elsewhere (100 × 100)."""
    pixels = np.zeros((100, 100, 3), dtype=np.uint8)
    pixels[:50, :50] = COLOURS["red"]
    pixels[50:, 50:] = COLOURS["blue"]
    return Image.fromarray(pixels)


def vg(phrase: str, box: str) -> str:
    return f"<|object_ref_start|>{phrase}<|object_ref_end|><|box_start|>{box}<|box_end|>"


# ---- selection: calibration, argmax, ties, invalid candidates ----------------------------------------------


def test_calibration_is_a_softmax_over_the_valid_scores():
    probs = calibrate([1.0, None, 3.0])
    assert probs == pytest.approx([1 / (1 + math.e**2), 0.0, math.e**2 / (1 + math.e**2)])
    assert calibrate([None, None]) == [0.0, 0.0]
    assert calibrate([500.0, 499.0]) == pytest.approx(
        [1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1))]
    )  # no overflow


def test_selection_picks_the_argmax_of_the_clip_scores():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scores = rng.normal(size=int(rng.integers(1, 6))).tolist()
        candidates = [Candidate(f"c{i}", float(rng.normal()), i) for i in range(len(scores))]
        for tie_break in ("logprob", "none"):
            chosen = select(candidates, scores, tie_break=tie_break)
            assert chosen.chosen == int(np.argmax(scores))
            assert chosen.response == f"c{chosen.chosen}"


def test_ties_within_the_margin_go_to_the_highest_log_prob():
    probs, logprobs, valid = [0.50, 0.49, 0.01], [-9.0, -2.0, -1.0], [True, True, True]
    assert choose(probs, logprobs, valid, "logprob", tie_margin=0.0) == 0
    assert choose(probs, logprobs, valid, "logprob", tie_margin=0.02) == 1  # 0.49 is within 0.02 of 0.50
    assert choose(probs, logprobs, valid, "none", tie_margin=0.02) == 0  # generation order
    assert choose([0.5, 0.5], [-3.0, -1.0], [True, True], "logprob") == 1  # an exact tie


def test_invalid_candidates_are_never_chosen_unless_all_are_invalid():
    assert choose([0.0, 1.0], [0.0, -50.0], [False, True], "logprob", tie_margin=1.0) == 1
    assert choose([0.0, 0.0, 0.0], [-5.0, -1.0, -3.0], [False] * 3, "logprob") == 1  # fallback: best log-prob
    assert choose([0.0, 0.0], [-5.0, -1.0], [False, False], "none") == 0  # fallback: best beam


def test_unparseable_vg_boxes_make_a_candidate_invalid():
    question = "Where is the <ref>blue</ref>?"
    assert answer_views("grounding", question, vg("blue", "(0,0),(500")) is None  # truncated box
    assert answer_views("grounding", question, vg("blue", "(0,0),(1200,900)")) is None  # off the 0–1000 scale
    assert answer_views("grounding", question, "blue") is None  # no box at all
    views = answer_views("grounding", question, vg("blue", "(500,500),(1000,1000)"))
    assert views is not None and views[0].box == Box(500, 500, 1000, 1000) and views[0].text == "blue"
    # The question's phrase is scored, whatever the answer names (or when it names nothing).
    assert answer_views("grounding", question, vg("red", "(1,2),(3,4)"))[0].text == "blue"
    assert answer_views("grounding", question, "<|box_start|>(1,2),(3,4)<|box_end|>")[0].text == "blue"
    assert answer_views("grounding", "Where is it?", vg("red", "(1,2),(3,4)"))[0].text == "red"


def test_region_answers_are_scored_on_the_question_box_and_markup_is_stripped():
    views = answer_views("region", "What is in <box>(0,0),(500,500)</box>?", "a <ref>red</ref> thing")
    assert views[0].box == Box(0, 0, 500, 500) and views[0].text == "a red thing"
    assert answer_views("region", "What is in this image?", "red")[0].box is None  # no box: the whole image
    assert clip_text("<|object_ref_start|>liver<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>  x") == "liver x"


def test_crop_takes_the_box_pixels_with_the_margin():
    image = two_squares()
    assert crop(image, Box(0, 0, 500, 500), 0.0).size == (50, 50)
    assert crop(image, Box(100, 100, 300, 300), 0.25).size == (30, 30)  # a 20 px box + 5 px each side
    assert crop(image, Box(0, 0, 1000, 1000), 0.5).size == (100, 100)  # clipped to the image
    assert crop(image, Box(400, 400, 400, 400), 0.0).size == (1, 1)  # degenerate box: one pixel
    assert crop(image, None, 0.3) is image


def test_scoring_picks_the_matching_crop_and_marks_broken_boxes_invalid():
    image = two_squares()
    questions = ["What is the object in <box>(0,0),(500,500)</box>?", "Where is the <ref>blue</ref> in this image?"]
    candidates = [
        ["blue", "red", "green"],
        [vg("blue", "(0,0),(500,500)"), vg("blue", "(500,500),(1000,1000)"), vg("blue", "(500,500),(1000")],
    ]
    scores = score_candidates(ColourScorer(), [image, image], ["ROC", "VG"], questions, candidates, crop_margin=0.0)
    assert np.argmax(scores[0]) == 1  # the red crop
    assert scores[1][2] is None and scores[1][1] > scores[1][0]  # the blue crop; the broken box is invalid
    selection = select([Candidate(text, -1.0, rank) for rank, text in enumerate(candidates[1])], scores[1])
    assert selection.chosen == 1 and selection.candidates[2].prob == 0.0 and not selection.candidates[2].valid
    assert [c.text for c in selection.ranked()][0] == candidates[1][1]


def test_score_pairs_embeds_each_distinct_image_and_text_once():
    calls = {"images": 0, "texts": 0}

    class Counting(ColourScorer):
        def embed_images(self, images):
            calls["images"] += len(images)
            return super().embed_images(images)

        def embed_texts(self, texts):
            calls["texts"] += len(texts)
            return super().embed_texts(texts)

    image = Image.new("RGB", (8, 8), COLOURS["red"])
    scores = Counting().score_pairs([image, image, image], ["red", "blue", "red"])
    assert calls == {"images": 1, "texts": 2}
    assert scores[0] == scores[2] and scores[0] > scores[1]


# ---- candidates: one batched generate call, log-probs ---------------------------------------------------------


def _noise_samples(tmp_path, n: int, task: str = "VG") -> list[Sample]:
    rng = np.random.default_rng(1)
    samples = []
    for i in range(n):
        path = tmp_path / f"ct_{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(112, 112, 3), dtype=np.uint8)).save(path)
        question = ["Where is the <ref>liver</ref>?", "What is the object in <box>(100,100),(600,700)</box>?"][i % 2]
        samples.append(Sample(f"ct_synth--test--{i:06d}", path, "ct", [Turn(question, "liver")], task=task))
    return samples


def test_batched_beam_candidates_equal_per_sample_generation(tmp_path, tiny_model, tiny_processor):
    from clinkd.batching import PromptCollator

    samples = _noise_samples(tmp_path, 3)
    collator = PromptCollator(tiny_processor)
    cfg = SelectConfig(method="sasg", num_beams=3, num_return_sequences=3)
    batched = generate_candidates(tiny_model, tiny_processor, collator, samples, 6, cfg)
    single = [generate_candidates(tiny_model, tiny_processor, collator, [sample], 6, cfg)[0] for sample in samples]
    assert [[c.text for c in cands] for cands in batched] == [[c.text for c in cands] for cands in single]
    for batch_cands, single_cands in zip(batched, single):
        assert [c.rank for c in batch_cands] == [0, 1, 2]
        assert [c.logprob for c in batch_cands] == pytest.approx([c.logprob for c in single_cands], abs=1e-4)
        assert all(c.logprob < 0 for c in batch_cands)
        assert batch_cands[0].logprob >= batch_cands[-1].logprob - 1e-5  # beams come best first


def test_generate_is_called_once_per_batch(tmp_path, tiny_model, tiny_processor, monkeypatch):
    from clinkd.batching import PromptCollator

    calls = []
    real = tiny_model.generate
    monkeypatch.setattr(
        tiny_model, "generate", lambda *a, **k: calls.append(k["num_return_sequences"]) or real(*a, **k)
    )
    cfg = SelectConfig(method="sasg", candidates="sample", num_return_sequences=4, temperature=1.0, top_p=0.95)
    samples = _noise_samples(tmp_path, 2)
    first = generate_candidates(tiny_model, tiny_processor, PromptCollator(tiny_processor), samples, 4, cfg, seed=3)
    again = generate_candidates(tiny_model, tiny_processor, PromptCollator(tiny_processor), samples, 4, cfg, seed=3)
    assert calls == [4, 4] and [len(c) for c in first] == [4, 4]
    assert first == again  # the sampling seed depends on the batch only: a resumed run draws the same


def test_sequence_log_probs_stop_at_each_beams_end_token(tmp_path, tiny_model, tiny_processor):
    """Our sum over raw logits equals transformers' transition scores, also for beams that end early."""
    batch = tiny_processor(
        text=[
            tiny_processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where?"}]}],
                tokenize=False,
                add_generation_prompt=True,
            )
        ]
        * 2,
        images=[Image.open(s.image) for s in _noise_samples(tmp_path, 2)],
        return_tensors="pt",
    )
    greedy = tiny_model.generate(**batch, max_new_tokens=3, do_sample=False)
    end = int(greedy[0, -1])  # a token the random model likes: some beams end early, others run on
    output = tiny_model.generate(
        **batch,
        max_new_tokens=8,
        num_beams=3,
        num_return_sequences=3,
        do_sample=False,
        eos_token_id=end,
        pad_token_id=end,
        return_dict_in_generate=True,
        output_logits=True,
        output_scores=True,
    )
    continuations = output.sequences[:, batch["input_ids"].shape[1] :]
    ours = sequence_logprobs(output.logits, continuations, output.beam_indices, end)
    reference = tiny_model.compute_transition_scores(output.sequences, output.scores, output.beam_indices).sum(dim=1)
    assert (continuations == end).any(dim=1).any() and not (continuations == end).any(dim=1).all()
    assert ours.tolist() == pytest.approx(reference.tolist(), abs=1e-4)


def test_run_predict_with_sasg_keeps_every_candidate(tmp_path, tiny_model, tiny_processor):
    from clinkd.engine.generate import write_predictions

    samples = _noise_samples(tmp_path, 3, task="ROC")
    selector = SasgSelector(ColourScorer(), SelectConfig(method="sasg"), crop_margin=0.1)
    paths = write_predictions(
        tiny_model,
        tiny_processor,
        {"ROC": samples},
        tmp_path / "out",
        PredictConfig(batch_size=2, max_new_tokens={"ROC": 4}),
        selector=selector,
    )
    rows = [json.loads(line) for line in paths["ROC"].read_text().splitlines()]
    assert [row["index"] for row in rows] == [0, 1, 2]
    for row in rows:
        assert len(row["candidates"]) == 3
        assert set(row["candidates"][0]) == {"text", "clip_score", "prob", "logprob", "valid"}
        assert row["response"] == row["candidates"][row["selected"]]["text"]
        assert sum(c["prob"] for c in row["candidates"]) == pytest.approx(1.0)


def test_a_choice_ranks_the_chosen_candidate_first(tmp_path, tiny_model, tiny_processor):
    from clinkd.batching import PromptCollator

    samples = _noise_samples(tmp_path, 2, task="ROC")
    selector = SasgSelector(ColourScorer(), SelectConfig(method="sasg"), crop_margin=0.1)
    for choice in selector(tiny_model, tiny_processor, PromptCollator(tiny_processor), "ROC", samples, 4):
        candidates = choice.ranked
        assert (
            len(candidates) == 3
            and candidates[0].text == choice.response == choice.row["candidates"][choice.row["selected"]]["text"]
        )
        assert [c.score for c in candidates[1:]] == sorted((c.score for c in candidates[1:]), reverse=True)
    with pytest.raises(ValueError, match="task"):
        selector(tiny_model, tiny_processor, PromptCollator(tiny_processor), "train", samples, 4)


def test_every_select_method_names_one_selector():
    import typing

    from clinkd.sasg import SELECTORS, BeamSelector, selector_for

    assert set(typing.get_args(SelectConfig.model_fields["method"].annotation)) == set(SELECTORS)
    assert selector_for(SelectConfig(method="greedy"), 0.1, 0, Path(".")) is None
    beam = selector_for(SelectConfig(method="beam", num_beams=2), 0.1, 0, Path("."))
    assert isinstance(beam, BeamSelector) and (beam.name, beam.num_beams) == ("beam", 2)


# ---- the embedded CLIP -------------------------------------------------------------------------------------------


def test_multi_positive_loss_is_clip_loss_for_distinct_texts():
    gen = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(5, 8, generator=gen), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(5, 8, generator=gen), dim=-1)
    scale = torch.tensor(7.0)
    logits = scale * images @ texts.T
    clip = (
        torch.nn.functional.cross_entropy(logits, torch.arange(5))
        + torch.nn.functional.cross_entropy(logits.T, torch.arange(5))
    ) / 2
    assert float(multi_positive_clip_loss(images, texts, torch.arange(5), scale)) == pytest.approx(
        float(clip), abs=1e-6
    )
    # Rows 0 and 1 share a text: each of them has two equally weighted positives.
    groups = torch.tensor([0, 0, 1, 2, 3])
    targets = torch.tensor(
        [[0.5, 0.5, 0, 0, 0], [0.5, 0.5, 0, 0, 0], [0, 0, 1.0, 0, 0], [0, 0, 0, 1.0, 0], [0, 0, 0, 0, 1.0]]
    )
    expected = (
        -(targets * logits.log_softmax(1)).sum(1).mean() - (targets * logits.T.log_softmax(1)).sum(1).mean()
    ) / 2
    assert float(multi_positive_clip_loss(images, texts, groups, scale)) == pytest.approx(float(expected), abs=1e-6)


def test_jittered_boxes_stay_valid_and_near_the_original():
    rng = np.random.default_rng(0)
    box = Box(0, 900, 40, 1000)
    for _ in range(500):
        moved = jittered(box, rng, 0.25)  # Box() itself rejects anything off the scale or inverted
        assert abs(moved.x1 - box.x1) <= 10 + 1e-9 and abs(moved.y2 - box.y2) <= 25 + 1e-9
    assert jittered(None, rng, 0.25) is None and jittered(box, rng, 0.0) == box


def test_image_prep_resizes_crops_and_normalises_like_clip():
    pixels = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3) * 10
    image = Image.fromarray(pixels)
    centred = ImagePrep(2, center_crop=True, mean=(0, 0, 0), std=(1, 1, 1))([image])
    assert centred.shape == (1, 3, 2, 2)
    assert torch.allclose(centred[0].permute(1, 2, 0), torch.tensor(pixels[:, 1:3] / 255.0, dtype=torch.float32))
    assert ImagePrep(5)([image, image]).shape == (2, 3, 5, 5)
    real_clip = {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}, "do_center_crop": True}
    assert ImagePrep.from_preprocessor_config(real_clip) == ImagePrep(224, center_crop=True)
    ours = ImagePrep(64)
    assert ImagePrep.from_preprocessor_config(ours.to_preprocessor_config()) == ours


def test_text_pooling_at_the_end_token_ignores_padding(tiny_tokenizer):
    """Every text ends with <|im_end|>, the config's eos_token_id: a text scores the same alone or padded in a batch."""
    from transformers import CLIPModel

    from clinkd.sasg.clip_train import clip_model_config

    torch.manual_seed(0)
    model = CLIPModel(
        clip_model_config(
            tiny_tokenizer,
            ClipTrainConfig(hidden=32, heads=2, projection=16, image_size=32, patch_size=8, context_length=16),
        )
    ).eval()
    end, pad = model.config.text_config.eos_token_id, tiny_tokenizer.pad_token_id
    assert end == tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    texts = ["liver", "A large bright round tumor in the upper left region of the image, and more words"]
    batch = encode_texts(tiny_tokenizer, texts, 16, end, pad)
    assert batch["input_ids"].shape[1] == 16 and (batch["input_ids"][:, -1] == end).tolist() == [False, True]
    assert int(batch["input_ids"][0, batch["attention_mask"][0].sum() - 1]) == end
    with torch.no_grad():
        padded = model.get_text_features(**batch).pooler_output[0]
        alone = model.get_text_features(**encode_texts(tiny_tokenizer, texts[:1], 16, end, pad)).pooler_output[0]
    assert torch.allclose(padded, alone, atol=1e-5)


@pytest.fixture(scope="module")
def small_synth(tmp_path_factory):
    """48 training images (192 turns) and 128 held-out test records, with a tokenizer trained on their text."""
    from clinkd.boxes import convert_markup
    from clinkd.data.medgrit import load_medgrit, load_test_split
    from clinkd.model.tokenizer import train_tokenizer
    from clinkd.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, seed=0, images=48, test_per_cell=4)
    train = load_medgrit(root / "train.json", root / "images")
    tests = [sample for samples in load_test_split(root, root / "images").values() for sample in samples]
    texts = [
        convert_markup(text, "qwen2-vl") for s in train for turn in s.turns for text in (turn.question, turn.answer)
    ]
    return train, tests, train_tokenizer(texts, vocab_size=400)


FAST_CLIP = dict(
    hidden=32, layers=1, heads=2, projection=32, image_size=32, patch_size=8, batch_size=32, context_length=32, steps=80
)


@pytest.fixture()
def one_thread():
    """Tiny matrices: one thread is faster, and spinning idle threads stall on a busy 2-core machine."""
    threads = torch.get_num_threads()
    yield 1
    torch.set_num_threads(threads)


def test_a_briefly_trained_clip_ranks_matching_texts_first(small_synth, tmp_path, one_thread):
    """Measured over seeds 0–7 (48 images, 80 steps, 128 held-out pairs): 0.773–0.906, mean 0.85 (0.844 for
    seed 0); chance is 0.5 ± 0.044. 0.68 sits ~4 chance-SDs above chance and ~2 measured SDs below the minimum."""
    from clinkd.sasg.clip_train import is_trained, matching_rate, sample_pairs, train_clip

    train, tests, tokenizer = small_synth
    cfg = ClipTrainConfig(**FAST_CLIP, threads=one_thread)
    result = train_clip(sample_pairs(train), tokenizer, cfg, tmp_path / "clip", seed=0)
    assert is_trained(result.model_dir) and result.steps == 80
    rates = matching_rate(load_scorer("embedded", result.model_dir), sample_pairs(tests), cfg.crop_margin)
    assert rates["all"] >= 0.68, rates


@pytest.mark.slow
def test_a_longer_trained_clip_ranks_matching_texts_first_for_most_pairs(small_synth, tmp_path, one_thread):
    """Default-size CLIP, 300 steps (batch 64) on 48 images: measured 0.898–0.914 over seeds 0–2 (0.906 for
    seed 1); the threshold is about 3 binomial standard deviations (128 pairs) below."""
    from clinkd.sasg.clip_train import matching_rate, sample_pairs, train_clip

    train, tests, tokenizer = small_synth
    cfg = ClipTrainConfig(steps=300, batch_size=64, threads=one_thread)
    result = train_clip(sample_pairs(train), tokenizer, cfg, tmp_path / "clip", seed=1)
    rates = matching_rate(load_scorer("embedded", result.model_dir), sample_pairs(tests), cfg.crop_margin)
    assert rates["all"] >= 0.82, rates


# ---- scorers, config and CLI ------------------------------------------------------------------------------------


def test_missing_scorer_directories_are_clear_errors(tmp_path):
    with pytest.raises(ScorerError, match="clip-train"):
        load_scorer("embedded", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScorerError, match="preprocessor_config.json|config.json"):
        load_scorer("hf", tmp_path / "empty")


def test_open_clip_missing_says_how_to_install_it(tmp_path, monkeypatch):
    (tmp_path / "open_clip_config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip → ImportError
    with pytest.raises(ScorerError, match=r"clinkd\[biomedclip\]"):
        load_scorer("open_clip", tmp_path)


def test_open_clip_scorer_loads_a_local_dir_and_scores_with_its_scale(tmp_path, monkeypatch):
    (tmp_path / "open_clip_config.json").write_text("{}")
    loaded = []

    class FakeOpenClip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(20.0)))

        def encode_image(self, pixels):
            return pixels.mean(dim=(2, 3))

        def encode_text(self, tokens):
            return tokens.float()

    fake = types.ModuleType("open_clip")
    fake.create_model_from_pretrained = lambda name, device: (
        loaded.append(name)
        or (FakeOpenClip(), lambda image: torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1))
    )
    fake.get_tokenizer = lambda name: (
        loaded.append(name) or (lambda texts: torch.tensor([[float(c in t) for c in COLOURS] for t in texts]))
    )
    monkeypatch.setitem(sys.modules, "open_clip", fake)
    scorer = load_scorer("open_clip", tmp_path)
    assert loaded == [f"local-dir:{tmp_path}"] * 2
    red = Image.new("RGB", (4, 4), COLOURS["red"])
    assert scorer.score_pairs([red, red], ["red", "blue"]).tolist() == pytest.approx([20.0, 0.0], abs=1e-4)


def test_select_config_checks_the_number_of_returned_beams():
    from clinkd.config import load_config

    with pytest.raises(ConfigError, match="select.num_return_sequences"):
        load_config(None, ["select.num_beams=2", "select.num_return_sequences=3"])
    assert (
        load_config(
            None, ["select.candidates=sample", "select.num_beams=1", "select.num_return_sequences=5"]
        ).select.num_return_sequences
        == 5
    )


def test_clip_train_command_writes_a_loadable_scorer(tmp_path, one_thread):
    from typer.testing import CliRunner

    from clinkd.cli import app

    tiny = [
        "clip.steps=3",
        "clip.hidden=32",
        "clip.layers=1",
        "clip.heads=2",
        "clip.projection=16",
        "clip.image_size=32",
        "clip.patch_size=8",
        "clip.batch_size=16",
        f"clip.threads={one_thread}",
        "model.tokenizer_vocab=300",
        "data.synth.images=8",
        "data.synth.test_per_cell=1",
    ]
    result = CliRunner().invoke(
        app, ["clip-train", f"output_dir={tmp_path}", "name=t", f"data.dir={tmp_path / 'data'}", *tiny]
    )
    assert result.exit_code == 0, result.output
    assert "held-out matching rate" in result.output
    scorer = load_scorer("embedded", tmp_path / "t" / "clip")
    rates = json.loads((tmp_path / "t" / "clip" / "heldout.json").read_text())
    assert 0 <= rates["all"] <= 1 and f"all {rates['all']:.1%}" in result.output  # the saved rate is the one reported
    assert scorer.score_pairs([Image.new("RGB", (40, 40))], ["liver"]).shape == (1,)


def test_predict_select_sasg_without_a_clip_is_one_clear_error(tmp_path, tiny_model, tiny_processor, small_data):
    from typer.testing import CliRunner

    from clinkd.cli import app
    from clinkd.model.loading import save_checkpoint

    save_checkpoint(tiny_model, tiny_processor, tmp_path / "model")
    result = CliRunner().invoke(
        app,
        [
            "predict",
            "--model",
            str(tmp_path / "model"),
            "--out",
            str(tmp_path / "o"),
            "--select",
            "sasg",
            f"output_dir={tmp_path}",
            f"data.dir={small_data}",
            "data.synth.enabled=false",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "clip-train" in result.output and "Traceback" not in result.output
