"""Position ids of the three RoPE strategies: stock equality (Qwen2-VL, Qwen3-VL and Qwen3.5's own ``get_rope_index``),
the paper's equations (through each family's clinkd model), the official rule."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2VLModel, Qwen3_5Model, Qwen3VLModel

from clinkd.model.positions import OFFICIAL, PAPER, STOCK, RopeStrategy, build_position_ids
from clinkd.model.rope import MODEL_CLASSES, set_rope_strategy

from conftest import MERGE, make_batch, tiny_qwen2vl_config, tiny_qwen3_5_config, tiny_qwen3vl_config

FAMILY_CONFIGS = {"qwen2_vl": tiny_qwen2vl_config, "qwen3_vl": tiny_qwen3vl_config, "qwen3_5": tiny_qwen3_5_config}
STOCK_MODELS = {"qwen2_vl": Qwen2VLModel, "qwen3_vl": Qwen3VLModel, "qwen3_5": Qwen3_5Model}


def random_specs(generator: torch.Generator, batch: int) -> list[list]:
    """0–2 images per sample with h, w ∈ {2, 4, 6} patches; the text around them may be empty at the
    ends (an image can open or close a sample) but never between two images."""
    def draw(low, high):
        return int(torch.randint(low, high + 1, (1,), generator=generator))

    specs = []
    for _ in range(batch):
        spec = [draw(0, 4)]
        for _ in range(draw(0, 2)):
            spec += [(2 * draw(1, 3), 2 * draw(1, 3)), draw(1, 4)]
        spec[-1] = draw(0, 4) if len(spec) > 1 else max(spec[-1], 1)
        specs.append([part for part in spec if part != 0])
    return specs


def positions(batch: dict, strategy: RopeStrategy):
    return build_position_ids(batch["mm_token_type_ids"], batch["image_grid_thw"], batch["attention_mask"],
                              spatial_merge_size=MERGE, strategy=strategy)


def image_runs(mm_row: torch.Tensor) -> list[tuple[int, int]]:
    """``(first_col, last_col)`` of each run of image tokens in one row (test oracle, plain Python)."""
    runs, cols = [], mm_row.nonzero().flatten().tolist()
    for col in cols:
        if runs and runs[-1][1] == col - 1:
            runs[-1][1] = col
        else:
            runs.append([col, col])
    return [tuple(run) for run in runs]


@pytest.fixture(scope="module")
def stock_models():
    """transformers' own inner model of each family (``get_rope_index`` reads only the config)."""
    return {family: STOCK_MODELS[family](FAMILY_CONFIGS[family]()) for family in STOCK_MODELS}


@pytest.fixture(scope="module")
def stock_model(stock_models):
    return stock_models["qwen2_vl"]


@pytest.mark.parametrize("family", STOCK_MODELS)
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_stock_equals_transformers_get_rope_index(stock_models, family, padding_side):
    stock_model = stock_models[family]
    generator = torch.Generator().manual_seed(1)
    for trial in range(40):
        batch = make_batch(random_specs(generator, 1 + trial % 4), padding_side, seed=trial)
        expected, expected_deltas = stock_model.get_rope_index(**batch)
        ids, deltas = positions(batch, STOCK)
        assert ids.dtype == expected.dtype and deltas.dtype == expected_deltas.dtype
        assert torch.equal(ids, expected), (trial, batch["attention_mask"])
        assert torch.equal(deltas, expected_deltas), trial


def test_stock_without_any_image_is_the_text_index(stock_model):
    batch = make_batch([[5], [3]], "left")
    assert batch["image_grid_thw"] is None
    ids, deltas = positions(batch, STOCK)
    expected, expected_deltas = stock_model.get_rope_index(**batch)
    assert torch.equal(ids, expected) and torch.equal(deltas, expected_deltas)
    assert ids[:, 1].tolist() == [[0, 0, 0, 1, 2]] * 3


# Three text tokens, a 2×2 LLM grid (4×4 patches), three text tokens: the table in docs/mcg-rope.md.
WORKED = {
    "qwen2vl": (STOCK, [0, 1, 2, 3, 3, 3, 3, 5, 6, 7], [0, 1, 2, 3, 3, 4, 4, 5, 6, 7],
                [0, 1, 2, 3, 4, 3, 4, 5, 6, 7], -2),
    "mcg": (PAPER, [0, 1, 2, 4.5, 4.5, 4.5, 4.5, 7, 8, 9], [0, 1, 2, 3.5, 3.5, 5.5, 5.5, 7, 8, 9],
            [0, 1, 2, 3.5, 5.5, 3.5, 5.5, 7, 8, 9], 0),
    "mcg-floor": (RopeStrategy(name="mcg", rounding="floor"), [0, 1, 2, 4, 4, 4, 4, 7, 8, 9],
                  [0, 1, 2, 3, 3, 5, 5, 7, 8, 9], [0, 1, 2, 3, 5, 3, 5, 7, 8, 9], 0),
    "clinkd-official": (OFFICIAL, [0, 1, 2, 4, 4, 4, 4, 7, 8, 9], [0, 1, 2, 4, 4, 5, 5, 7, 8, 9],
                        [0, 1, 2, 4, 5, 4, 5, 7, 8, 9], 0),
}


@pytest.mark.parametrize("case", WORKED)
def test_worked_example(case):
    strategy, t, h, w, delta = WORKED[case]
    ids, deltas = positions(make_batch([[3, (4, 4), 3]]), strategy)
    assert ids[:, 0].tolist() == [t, h, w]
    assert deltas.tolist() == [[delta]]
    assert ids.dtype == (torch.float32 if strategy.float_positions else torch.long)


def test_mcg_odd_square_grid_gives_integers():
    ids, _ = positions(make_batch([[3, (6, 6), 3]]), PAPER)  # 3×3 LLM grid: ℓ = 2, wh = 9
    assert ids[:, 0].tolist() == [
        [0, 1, 2] + [7] * 9 + [12, 13, 14],
        [0, 1, 2] + [5] * 3 + [7] * 3 + [9] * 3 + [12, 13, 14],
        [0, 1, 2] + [5, 7, 9] * 3 + [12, 13, 14],
    ]


@pytest.fixture(scope="module")
def mcg_rope_index():
    """``{family: get_rope_index}`` of each family's clinkd inner model, by alpha (built once per alpha)."""
    built = {}

    def rope_index(family: str, alpha: tuple[float, float]):
        if (family, alpha) not in built:
            config = FAMILY_CONFIGS[family]()
            set_rope_strategy(config, RopeStrategy(name="mcg", alpha=alpha))
            built[family, alpha] = MODEL_CLASSES[family](config).model.get_rope_index
        return built[family, alpha]

    return rope_index


@pytest.mark.parametrize("family", FAMILY_CONFIGS)
@pytest.mark.parametrize("alpha", [(2.0, 2.0), (1.0, 1.0), (1.5, 3.0)])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_mcg_matches_the_paper_equations_for_every_image(mcg_rope_index, family, alpha, padding_side):
    """Each patch at (α₁v⁽¹⁾ + λ₁, α₂v⁽²⁾ + λ₂) with the paper's λ, the next text at ℓ + wh + 1, and
    equal gaps before and after the image on both axes: the ids each family's clinkd model computes."""
    generator = torch.Generator().manual_seed(2)
    checked = 0
    for trial in range(15):
        batch = make_batch(random_specs(generator, 3), padding_side, seed=trial)
        ids, _ = mcg_rope_index(family, alpha)(**batch)
        grids = iter(batch["image_grid_thw"].tolist() if batch["image_grid_thw"] is not None else [])
        for b in range(ids.shape[1]):
            valid = batch["attention_mask"][b].nonzero().flatten().tolist()
            for first, last in image_runs(batch["mm_token_type_ids"][b]):
                _, grid_h, grid_w = next(grids)
                h, w = grid_h // MERGE, grid_w // MERGE
                # ℓ: the token before the image; a virtual -1 when the image opens the sample
                ell = ids[0, b, first - 1].item() if first > valid[0] else -1.0
                lambda1 = ell + (w * h + 1 - alpha[0] * (h + 1)) / 2
                lambda2 = ell + (w * h + 1 - alpha[1] * (w + 1)) / 2
                v1 = torch.arange(1, h + 1).repeat_interleave(w).double()
                v2 = torch.arange(1, w + 1).repeat(h).double()
                assert torch.allclose(ids[1, b, first:last + 1].double(), alpha[0] * v1 + lambda1)
                assert torch.allclose(ids[2, b, first:last + 1].double(), alpha[1] * v2 + lambda2)
                if last < valid[-1]:
                    after = ids[:, b, last + 1]
                    assert torch.all(after == ell + w * h + 1)
                    for axis in (1, 2):
                        before_gap = ids[axis, b, first].item() - ell
                        after_gap = after[axis].item() - ids[axis, b, last].item()
                        assert before_gap == pytest.approx(after_gap)
                checked += 1
    assert checked > 20


def test_mcg_floor_is_the_floor_of_the_float_ids():
    batch = make_batch(random_specs(torch.Generator().manual_seed(3), 4), "left")
    exact, exact_deltas = positions(batch, RopeStrategy(name="mcg", alpha=(1.5, 2.0)))
    floored, floored_deltas = positions(batch, RopeStrategy(name="mcg", alpha=(1.5, 2.0), rounding="floor"))
    assert floored.dtype == torch.long and exact.dtype == torch.float32
    assert torch.equal(floored, exact.floor().long())
    assert torch.equal(floored_deltas, exact_deltas.long())


def test_official_rule_is_batch_safe_and_handles_edge_samples():
    batch = make_batch([[2, (4, 4), 1, (2, 4), 2], [4], [(4, 4), 2]], "left")
    ids, deltas = positions(batch, OFFICIAL)
    # image 1 starts at max(text)+2 = 3; text at max(image)+2 = 6; image 2 at 8; text at 9+2 = 11
    assert ids[:, 0].tolist() == [
        [0, 1, 3, 3, 3, 3, 6, 8, 8, 11, 12],
        [0, 1, 3, 3, 4, 4, 6, 8, 8, 11, 12],
        [0, 1, 3, 4, 3, 4, 6, 8, 9, 11, 12],
    ]
    assert ids[:, 1, -4:].tolist() == [[0, 1, 2, 3]] * 3  # a sample without an image is plain text
    assert ids[:, 2, -6:].tolist() == [[0, 0, 0, 0, 3, 4], [0, 0, 1, 1, 3, 4], [0, 1, 0, 1, 3, 4]]
    assert deltas.flatten().tolist() == [13 - 11, 0, 5 - 6]


@pytest.mark.parametrize("strategy", [STOCK, PAPER, OFFICIAL, RopeStrategy(name="mcg", alpha=(1.5, 1.0))],
                         ids=["qwen2vl", "mcg", "official", "mcg-1.5"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_deltas_place_the_next_token_where_a_full_recompute_does(strategy, padding_side):
    specs = random_specs(torch.Generator().manual_seed(4), 6)
    short, longer = make_batch(specs, padding_side), make_batch([spec + [1] for spec in specs], padding_side)
    _, deltas = positions(short, strategy)
    ids = positions(longer, strategy)[0]
    n_valid = short["attention_mask"].sum(1)
    new_col = n_valid if padding_side == "right" else torch.full_like(n_valid, ids.shape[2] - 1)
    new_positions = ids[:, torch.arange(len(specs)), new_col]
    assert torch.equal(new_positions, (n_valid + deltas[:, 0]).to(ids.dtype).expand(3, -1))


def test_ids_of_a_longer_prompt_extend_those_of_the_shorter_one():
    """Positions are causal: appending text never moves earlier tokens (needed for cached decoding)."""
    specs = random_specs(torch.Generator().manual_seed(5), 4)
    for strategy in (STOCK, PAPER, OFFICIAL):
        short = positions(make_batch(specs, "right"), strategy)[0]
        long = positions(make_batch([spec + [3] for spec in specs], "right"), strategy)[0]
        mask = make_batch(specs, "right")["attention_mask"].bool()
        assert torch.equal(long[:, :, : short.shape[2]][:, mask], short[:, mask])


def test_inconsistent_inputs_are_clear_errors():
    batch = make_batch([[2, (4, 4), 2]])
    with pytest.raises(ValueError, match="describes 8 image tokens .* marks 4"):
        build_position_ids(batch["mm_token_type_ids"], torch.tensor([[1, 4, 8]]), None, spatial_merge_size=2)
    with pytest.raises(ValueError, match="no image_grid_thw"):
        build_position_ids(batch["mm_token_type_ids"], None, None, spatial_merge_size=2)
    with pytest.raises(ValueError, match="t = 1"):
        build_position_ids(batch["mm_token_type_ids"].repeat(1, 2), torch.tensor([[2, 4, 4]]), None,
                           spatial_merge_size=2)
    with pytest.raises(ValueError, match="video tokens"):
        build_position_ids(batch["mm_token_type_ids"] * 2, None, None, spatial_merge_size=2)
    split = make_batch([[2, (4, 4), 2, (4, 4), 2]])
    with pytest.raises(ValueError, match=r"image\(s\) \[0\]: tokens are not one contiguous run"):
        build_position_ids(split["mm_token_type_ids"], torch.tensor([[1, 4, 8]]), None, spatial_merge_size=2)


def test_strategy_validation_and_round_trip():
    with pytest.raises(ValueError, match="only apply to name='mcg'"):
        RopeStrategy(name="clinkd-official", alpha=(1.0, 1.0))
    with pytest.raises(ValueError, match="only apply to name='mcg'"):
        RopeStrategy(name="qwen2vl", rounding="floor")
    with pytest.raises(ValueError, match="positive"):
        RopeStrategy(name="mcg", alpha=(0.0, 2.0))
    with pytest.raises(ValueError):
        RopeStrategy(name="mrope")
    strategy = RopeStrategy(name="mcg", alpha=(1.5, 3.0), frequency="paper", rounding="floor")
    assert RopeStrategy.from_dict(strategy.to_dict()) == strategy
    with pytest.raises(ValueError, match="unknown key"):
        RopeStrategy.from_dict({**strategy.to_dict(), "alhpa": [1, 1]})
