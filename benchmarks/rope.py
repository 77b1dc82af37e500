"""MCG-RoPE cost, measured side by side in one run.

    python benchmarks/rope.py                 # both parts
    python benchmarks/rope.py --repeats 50 --steps 30

1. Building position ids for a padded batch: ours (:func:`clinkd.model.positions.build_position_ids`,
   vectorised) against transformers' ``Qwen2VLModel.get_rope_index`` (a Python loop per sample and
   modality group), on batch ``--batch`` of Med-GRIT-like layouts: one image of 18×18…26×26 LLM tokens
   (a 504–728 px image) between a 10–20 token prefix and a 20–60 token question + answer, left padded.
   Both must give identical ids, which the script checks before timing.
2. One training step (forward + backward + AdamW) of the tiny ``s`` model at 112 px, batch 16, with the
   ``mcg`` strategy against ``qwen2vl``; the two models share weights and inputs and the steps are
   interleaved, so machine noise hits both alike.

Times are medians; the printed figures are ratios, with the medians beside them for scale. Run it on an
otherwise idle machine: with 2 threads on 2 busy cores torch's intra-op thread pool dominates small ops.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import Qwen2VLModel

from clinkd.model.positions import PAPER, STOCK, build_position_ids

MERGE = 2


def median_seconds(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def medgrit_like_batch(batch: int, image_token: int, seed: int = 0) -> dict:
    """Left-padded ids with one image per sample (random side 18–26 LLM tokens), as the processor lays them out."""
    generator = torch.Generator().manual_seed(seed)
    rows, grids = [], []
    for _ in range(batch):
        side = int(torch.randint(18, 27, (1,), generator=generator))
        prefix = torch.randint(10, 100, (int(torch.randint(10, 21, (1,), generator=generator)),), generator=generator)
        suffix = torch.randint(10, 100, (int(torch.randint(20, 61, (1,), generator=generator)),), generator=generator)
        rows.append(torch.cat([prefix, torch.full((side * side,), image_token), suffix]))
        grids.append([1, side * MERGE, side * MERGE])
    length = max(len(row) for row in rows)
    input_ids = torch.zeros(batch, length, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for b, row in enumerate(rows):
        input_ids[b, length - len(row) :] = row
        attention_mask[b, length - len(row) :] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mm_token_type_ids": (input_ids == image_token).int(),
        "image_grid_thw": torch.tensor(grids),
    }


def position_id_part(batch_size: int, repeats: int) -> None:
    from transformers import Qwen2VLConfig

    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=0,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, spatial_merge_size=MERGE),
        image_token_id=120,
        video_token_id=121,
        vision_start_token_id=122,
        vision_end_token_id=123,
    )
    stock_model = Qwen2VLModel(config)
    batch = medgrit_like_batch(batch_size, config.image_token_id)

    def transformers_ids():
        return stock_model.get_rope_index(
            batch["input_ids"],
            batch["mm_token_type_ids"],
            batch["image_grid_thw"],
            attention_mask=batch["attention_mask"],
        )

    def ours(strategy):
        return lambda: build_position_ids(
            batch["mm_token_type_ids"],
            batch["image_grid_thw"],
            batch["attention_mask"],
            spatial_merge_size=MERGE,
            strategy=strategy,
        )

    expected, expected_deltas = transformers_ids()
    got, got_deltas = ours(STOCK)()
    valid = batch["attention_mask"].bool()
    assert torch.equal(got[:, valid], expected[:, valid]) and torch.equal(got_deltas, expected_deltas), (
        "stock ids differ"
    )

    reference = median_seconds(transformers_ids, repeats)
    stock = median_seconds(ours(STOCK), repeats)
    mcg = median_seconds(ours(PAPER), repeats)
    print(
        f"## Position ids: batch {batch_size}, length {batch['input_ids'].shape[1]} (one image per sample), median of "
        f"{repeats}"
    )
    print("| builder | median ms | speed-up vs transformers |")
    print("|---|---:|---:|")
    print(f"| transformers `get_rope_index` | {reference * 1e3:.2f} | 1.00× |")
    print(f"| clinkd `qwen2vl` (identical ids) | {stock * 1e3:.2f} | {reference / stock:.1f}× |")
    print(f"| clinkd `mcg` | {mcg * 1e3:.2f} | {reference / mcg:.1f}× |")


def training_step_part(steps: int) -> None:
    import tempfile
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from clinkd.batching import ChatExample, TrainCollator
    from clinkd.config import ModelConfig
    from clinkd.data.records import Turn
    from clinkd.model.rope import load_model_class, set_rope_strategy
    from clinkd.recipes.inputs import build_tiny_from

    turns = [
        Turn("Where is the liver?", "<ref>liver</ref><box>(112,305),(498,702)</box>"),
        Turn("What is the object in <box>(540,410),(640,560)</box>?", "right kidney"),
    ]
    corpus = [text for turn in turns for text in (turn.question, turn.answer)] * 50
    model_stock, processor = build_tiny_from(ModelConfig(size="s"), corpus, seed=0, rope=STOCK)
    config = model_stock.config.__class__.from_dict(model_stock.config.to_dict())
    set_rope_strategy(config, PAPER)
    model_mcg = load_model_class(config)(config)
    model_mcg.load_state_dict(model_stock.state_dict())

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        examples = []
        for index in range(16):
            path = Path(folder) / f"ct_{index}.png"
            Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(path)
            examples.append(ChatExample(path, (turns[index % 2],)))
        batch = TrainCollator(processor)(examples)

    def step_function(model):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            optimizer.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            optimizer.step()

        return step

    stock_step, mcg_step = step_function(model_stock.train()), step_function(model_mcg.train())
    stock_step(), mcg_step()  # warm-up
    stock_times, mcg_times = [], []
    for _ in range(steps):
        for step, times in ((stock_step, stock_times), (mcg_step, mcg_times)):
            started = time.perf_counter()
            step()
            times.append(time.perf_counter() - started)
    stock, mcg = statistics.median(stock_times), statistics.median(mcg_times)
    print(
        f"\n## Training step: tiny `s`, 112 px, batch 16, {torch.get_num_threads()} threads, median of {steps} "
        "interleaved steps"
    )
    print("| strategy | median ms | vs qwen2vl |")
    print("|---|---:|---:|")
    print(f"| qwen2vl | {stock * 1e3:.1f} | 1.000× |")
    print(f"| mcg | {mcg * 1e3:.1f} | {mcg / stock:.3f}× ({(mcg / stock - 1) * 100:+.1f} %) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    position_id_part(args.batch, args.repeats)
    training_step_part(args.steps)


if __name__ == "__main__":
    main()
