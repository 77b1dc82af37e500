"""Qwen2-VL at its real 2B / 7B shape (random weights, MCG-RoPE): training throughput and MFU, KD peak
memory with an online vs a cached teacher, SASG candidate cost next to greedy, and generation speed.

On a GPU (one card; CUDA is used whenever it is available):

    python benchmarks/real_scale.py --shape 2b --teacher-shape 7b --json real_scale_2b.json   # the paper's pair
    python benchmarks/real_scale.py --shape 7b --json real_scale_7b.json

On CPU (a smoke run at reduced size; the test suite runs this):

    python benchmarks/real_scale.py --shape reduced --steps 2 --warmup 1 --image-size 56 --new-tokens 4 --json out.json

Shapes: ``2b`` is the published Qwen2-VL-2B-Instruct ``config.json`` (tests/data/reference); ``7b`` is the same
with Qwen2-VL-7B-Instruct's dimensions (:data:`QWEN2_VL_7B`: hidden 3584, 28 layers, 28 heads, 4 KV heads, MLP 18944,
untied head over 152,064 ids as published, so a 7B teacher's logits are sliced to a 2B student's 151,936);
``reduced`` is ``clinkd.testing.real_format.reduced_config``. Every model is the clinkd class with MCG-RoPE,
built directly on the device in ``--dtype`` (bf16 by default: parameters, gradients and optimiser state).

One sample: ``--prompt-tokens`` random text ids, ``<|vision_start|>``, (size/28)² image tokens of one square
``--image-size`` image, ``<|vision_end|>``, ``--answer-tokens`` random answer ids (the only labelled tokens).

1. Training: full fine-tuning steps (plain CE, as SFT) on one ``--batch-size`` batch; ``--warmup`` steps are
   excluded, the device is synchronised around the ``--steps`` timed ones. tokens/s counts every token of the
   batch (prompt, image and answer). Model FLOPs per step, as counted here:
   6·N_llm·T + 12·layers·hidden·S·T for the LLM (T = B·S tokens, S the sequence length; N_llm = every LLM
   parameter except the input-embedding table, which is a lookup; the output head is counted, tied or not),
   plus 6·N_tower·P + 6·N_merger·P/4 + 12·depth·embed_dim·(P/B)·P for the vision tower run on its P patches
   (N_tower = patch embedding and blocks, N_merger = the patch merger, which runs on the merged tokens).
   Causal masking is not discounted. MFU = those FLOPs per second ÷ the card's dense bf16 peak
   (:data:`PEAK_BF16_FLOPS`, by device name); "n/a" on CPU, an unknown card or a dtype other than bf16.
   Optimiser (``--optimizer auto``): AdamW, unless parameters + gradients + AdamW's two states (8 bytes a
   parameter in bf16) would take over 75 % of the card's memory (7B on an 80 GB card), then plain SGD
   (4 bytes a parameter; the same FLOPs, so MFU still holds); the table says which ran.
2. KD peak memory: two KD steps (the second with the optimiser state resident, as in training) of a fresh
   student in a fresh subprocess per variant, the loss computed as ``clinkd.distill.KDTrainer.compute_loss``
   does with the default ``distill:`` settings (paper preset, top-k 64): ``online`` keeps a
   ``--teacher-shape`` teacher on the device and runs its forward in every step (dense KD);
   ``cached`` has no teacher and uses top-k log-probs precomputed with ``topk_logprobs`` (of random teacher
   logits, computed before the student is built: the values change nothing in the cost). The figure is the
   process's whole peak: ``torch.cuda.max_memory_allocated`` on CUDA (models, optimiser and step), the peak RSS
   growth over the process's start (``ru_maxrss``) on CPU.
3. SASG candidates: one ``generate`` with ``clinkd.sasg.candidates``' beam settings (3 beams, 3 returned,
   ``output_logits=True``) plus its sequence log-probs, against greedy decoding of the same ``--gen-batch``
   prompts; both produce exactly ``--new-tokens`` tokens (min = max new tokens).
4. Generation: greedy ``generate`` with the KV cache, ``--gen-batch`` prompts × ``--new-tokens`` tokens.

A CUDA out-of-memory in one measurement prints "OOM" for it and the others still run; any other failure is
printed as an error, the rest still runs, and the script exits with status 1.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import transformers
from transformers import Qwen2VLConfig

from clinkd.config import DistillConfig, SelectConfig
from clinkd.distill.batches import batch_position_ids
from clinkd.doctor import device_description
from clinkd.engine.generate import decoding
from clinkd.losses import combine_losses, kd_divergence, sparse_kd_divergence, topk_logprobs
from clinkd.model.positions import PAPER
from clinkd.model.rope import load_model_class, rope_strategy_of, set_rope_strategy
from clinkd.sasg.candidates import decoding_kwargs, sequence_logprobs
from clinkd.testing.real_format import reduced_config

REFERENCE_2B = Path(__file__).resolve().parents[1] / "tests" / "data" / "reference" / "qwen2-vl-2b-instruct"
# Qwen2-VL-7B-Instruct's published dimensions; everything else as the 2B config.
QWEN2_VL_7B = {
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "max_window_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False,
}
# Dense bf16 peak FLOP/s by device-name fragment, first match wins (PCIe before the other H100 names).
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12), ("H100 SXM", 989e12), ("H100 80GB HBM3", 989e12), ("H200", 989e12),
    ("A100", 312e12), ("L40S", 362e12),
)
TEXT_IDS = 151643  # ordinary BPE ids lie below the special tokens
PAD_ID, END_ID = 151643, 151645  # <|endoftext|>, <|im_end|>
KD_VARIANTS = ("online", "cached")
OPTIMIZER_BYTES = {"adamw": 8, "sgd": 4}  # parameter + gradient (+ 2 AdamW states), bytes each in bf16
KD_STEPS = 2
MIB = 2**20


def model_config(shape: str) -> Qwen2VLConfig:
    """The flat published config of ``shape`` with MCG-RoPE recorded."""
    published = json.loads((REFERENCE_2B / "config.json").read_text())
    seven_b = {**published, **QWEN2_VL_7B, "vision_config": {**published["vision_config"], "hidden_size": 3584}}
    flat = {"2b": published, "7b": seven_b, "reduced": reduced_config(REFERENCE_2B)}[shape]
    config = Qwen2VLConfig.from_dict(flat)
    set_rope_strategy(config, PAPER)
    return config


def build_model(config: Qwen2VLConfig, device: torch.device, dtype: torch.dtype):
    """A randomly initialised clinkd model, allocated directly on ``device`` in ``dtype``."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            return load_model_class(config)(config)
    finally:
        torch.set_default_dtype(previous)


def synthetic_batch(config, args, batch_size: int, device, with_answer: bool = True) -> tuple[dict, torch.Tensor]:
    """(model inputs, labels): prompt, one image, answer per row; labels are -100 but on the answer."""
    vision = config.vision_config
    grid = args.image_size // vision.patch_size
    image_tokens = (grid // vision.spatial_merge_size) ** 2
    answer = args.answer_tokens if with_answer else 0

    def column(token_id, n):
        return torch.full((batch_size, n), token_id)

    input_ids = torch.cat(
        [
            torch.randint(0, TEXT_IDS, (batch_size, args.prompt_tokens)),
            column(config.vision_start_token_id, 1),
            column(config.image_token_id, image_tokens),
            column(config.vision_end_token_id, 1),
            torch.randint(0, TEXT_IDS, (batch_size, answer)),
        ],
        dim=1,
    )
    labels = input_ids.clone()
    labels[:, : input_ids.shape[1] - answer] = -100
    patch_values = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "mm_token_type_ids": (input_ids == config.image_token_id).long(),
        "pixel_values": torch.randn(batch_size * grid * grid, patch_values, dtype=args.torch_dtype),
        "image_grid_thw": torch.tensor([[1, grid, grid]] * batch_size),
    }
    return {key: value.to(device) for key, value in inputs.items()}, labels.to(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def choose_optimizer(args, model, device: torch.device) -> str:
    """``--optimizer``, or for ``auto`` AdamW unless its bf16 state would fill over 75 % of the card."""
    if args.optimizer != "auto":
        return args.optimizer
    if device.type != "cuda":
        return "adamw"
    need = sum(p.numel() for p in model.parameters()) * OPTIMIZER_BYTES["adamw"]
    total = torch.cuda.get_device_properties(device).total_memory
    if need <= 0.75 * total:
        return "adamw"
    print(f"note: AdamW needs {need / 2**30:.0f} GiB for weights, gradients and state, over 75 % of "
          f"{total / 2**30:.0f} GiB: training with SGD instead (same FLOPs)", file=sys.stderr)
    return "sgd"


def make_optimizer(name: str, model) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=1e-5)
    return torch.optim.SGD(model.parameters(), lr=1e-5)


def parameter_count(parameters) -> int:
    return sum(p.numel() for p in parameters)


def training_flops_per_step(model, inputs: dict) -> float:
    """Model FLOPs of one training step (forward + backward), counted as in the module docstring."""
    text, vision = model.config.text_config, model.config.vision_config
    batch_size, seq = inputs["input_ids"].shape
    patches = inputs["pixel_values"].shape[0]
    visual = model.model.visual
    in_visual = {id(p) for p in visual.parameters()}
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    llm = parameter_count(p for p in model.parameters() if id(p) not in in_visual and (p is not embedding or p is head))
    merger = parameter_count(visual.merger.parameters())
    tower = parameter_count(visual.parameters()) - merger
    tokens = batch_size * seq
    return (
        6 * llm * tokens + 12 * text.num_hidden_layers * text.hidden_size * seq * tokens
        + 6 * tower * patches + 6 * merger * patches / vision.spatial_merge_size**2
        + 12 * vision.depth * vision.embed_dim * (patches // batch_size) * patches
    )


def peak_bf16_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    if device.type != "cuda" or dtype != torch.bfloat16:
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for fragment, flops in PEAK_BF16_FLOPS if fragment in name), None)


def measure_training(model, args, device: torch.device) -> dict:
    """Training tokens/s and MFU of full fine-tuning steps (CE loss) on one synthetic batch."""
    inputs, labels = synthetic_batch(model.config, args, args.batch_size, device)
    optimizer_name = choose_optimizer(args, model, device)
    optimizer = make_optimizer(optimizer_name, model)
    model.train()

    def step() -> None:
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    try:
        for _ in range(args.warmup):
            step()
        synchronize(device)
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        synchronize(device)
        step_s = (time.perf_counter() - started) / args.steps
    finally:
        model.zero_grad(set_to_none=True)
    flops = training_flops_per_step(model, inputs)
    peak = peak_bf16_flops(device, args.torch_dtype)
    return {
        "optimizer": optimizer_name,
        "train_step_s": step_s,
        "train_tokens_per_s": labels.numel() / step_s,
        "train_flops_per_token": flops / labels.numel(),
        "train_tflops_per_s": flops / step_s / 1e12,
        "peak_bf16_tflops": "n/a" if peak is None else peak / 1e12,
        "train_mfu": "n/a" if peak is None else flops / step_s / peak,
    }


def random_topk_cache(args, student_config, teacher_config, labels, cfg, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k log-probs of random teacher logits on the answer rows, as a teacher cache stores them."""
    logits = torch.randn(*labels.shape, teacher_config.text_config.vocab_size, device=device, dtype=args.torch_dtype)
    return topk_logprobs(logits, labels, args.top_k, cfg, student_vocab_size=student_config.text_config.vocab_size)


def kd_loss(
    student, teacher, cache, inputs: dict, labels: torch.Tensor, position_ids: torch.Tensor, cfg
) -> torch.Tensor:
    """The loss of ``KDTrainer.compute_loss``: dense KD against ``teacher`` run now, or sparse KD against ``cache``.

    A function of its own so that, as in the trainer, the logits not needed by backward are freed before it.
    """
    outputs = student(**inputs, labels=labels, position_ids=position_ids)
    if teacher is not None:
        with torch.no_grad():
            teacher_logits = teacher(**inputs, position_ids=position_ids).logits
        kd_total, n_tokens = kd_divergence(outputs.logits, teacher_logits, labels, cfg)
    else:
        kd_total, n_tokens = sparse_kd_divergence(outputs.logits, labels, *cache, cfg)
    return combine_losses(kd_total, n_tokens, outputs.loss, cfg)["loss"]


def kd_variant_peak(args, variant: str, device: torch.device) -> float:
    """Peak memory (MiB) of ``KD_STEPS`` KD steps with an online teacher or a cached one, in this process."""
    start_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    student_config, teacher_config = model_config(args.shape), model_config(args.teacher_shape)
    cfg = DistillConfig(top_k=args.top_k).loss
    inputs, labels = synthetic_batch(student_config, args, args.batch_size, device)
    cache = (
        random_topk_cache(args, student_config, teacher_config, labels, cfg, device) if variant == "cached" else None
    )
    student = build_model(student_config, device, args.torch_dtype).train()
    optimizer = make_optimizer(choose_optimizer(args, student, device), student)
    teacher = (
        build_model(teacher_config, device, args.torch_dtype).eval().requires_grad_(False)
        if variant == "online"
        else None
    )
    position_ids = batch_position_ids(
        inputs, rope_strategy_of(student.config), student.config.vision_config.spatial_merge_size
    )
    for _ in range(KD_STEPS):
        kd_loss(student, teacher, cache, inputs, labels, position_ids, cfg).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start_rss_kib) / 1024


def run_kd_child(args, variant: str) -> float | str:
    """``kd_variant_peak`` in a fresh subprocess of this script, so each peak is its own ("OOM" if it ran out)."""
    command = [sys.executable, __file__, *sys.argv[1:], "--kd-variant", variant]
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"KD variant {variant} failed:\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])["peak_mib"]


def measure_kd_memory(args) -> dict:
    online, cached = (run_kd_child(args, variant) for variant in KD_VARIANTS)
    both = isinstance(online, float) and isinstance(cached, float)
    return {
        "kd_online_peak_mib": online,
        "kd_cached_peak_mib": cached,
        "kd_cached_over_online": cached / online if both else "n/a",
    }


def timed(device: torch.device, work) -> tuple[float, object]:
    """(seconds, result) of ``work()``, the device synchronised before and after."""
    synchronize(device)
    started = time.perf_counter()
    result = work()
    synchronize(device)
    return time.perf_counter() - started, result


def generate_exactly(model, prompts: dict, new_tokens: int, **settings):
    """One ``generate`` call that produces exactly ``new_tokens`` tokens per row."""
    return model.generate(
        **prompts,
        **settings,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=PAD_ID,
        eos_token_id=END_ID,
    )


def sasg_candidates(model, prompts: dict, new_tokens: int) -> torch.Tensor:
    """SASG's candidates as ``generate_candidates`` makes them: beam search with logits, then their log-probs."""
    beam = decoding_kwargs(SelectConfig(method="sasg", candidates="beam", num_beams=3, num_return_sequences=3))
    output = generate_exactly(model, prompts, new_tokens, **beam, return_dict_in_generate=True, output_logits=True)
    continuations = output.sequences[:, prompts["input_ids"].shape[1] :]
    return sequence_logprobs(output.logits, continuations, output.beam_indices, END_ID)


@torch.inference_mode()
def measure_generation(model, args, device: torch.device) -> dict:
    """Greedy tokens/s with the KV cache, and SASG candidates' time over greedy's on the same prompts."""
    model.eval()
    prompts, _ = synthetic_batch(model.config, args, args.gen_batch, device, with_answer=False)
    greedy = decoding(do_sample=False, num_beams=1)
    generate_exactly(model, prompts, 2, **greedy)  # warm-up of both decodings (kernels, allocator)
    sasg_candidates(model, prompts, 2)
    greedy_s, _ = timed(device, lambda: generate_exactly(model, prompts, args.new_tokens, **greedy))
    sasg_s, _ = timed(device, lambda: sasg_candidates(model, prompts, args.new_tokens))
    return {
        "generate_tokens_per_s": args.gen_batch * args.new_tokens / greedy_s,
        "greedy_s": greedy_s,
        "sasg_s": sasg_s,
        "sasg_over_greedy": sasg_s / greedy_s,
    }


MEASUREMENT_KEYS = {
    "kd_memory": ("kd_online_peak_mib", "kd_cached_peak_mib", "kd_cached_over_online"),
    "training": ("train_step_s", "train_tokens_per_s", "train_tflops_per_s", "train_mfu"),
    "generation": ("generate_tokens_per_s", "greedy_s", "sasg_s", "sasg_over_greedy"),
}


def guarded(name: str, measure, results: dict, failures: list[str], device: torch.device) -> None:
    """Run one measurement into ``results``; OOM and other failures mark its keys instead of stopping the run."""
    try:
        results.update(measure())
        return
    except torch.OutOfMemoryError:
        outcome = "OOM"
    except Exception as error:  # noqa: BLE001 - reported, the other measurements still run
        traceback.print_exc()
        outcome = f"error: {type(error).__name__}"
        failures.append(name)
    results.update(dict.fromkeys(MEASUREMENT_KEYS[name], outcome))
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_all(args, device: torch.device) -> tuple[dict, list[str]]:
    """KD memory first (its subprocesses get the card to themselves), then training and generation."""
    results: dict = {}
    failures: list[str] = []
    guarded("kd_memory", lambda: measure_kd_memory(args), results, failures, device)
    torch.manual_seed(0)
    model = build_model(model_config(args.shape), device, args.torch_dtype)
    results["parameters"] = parameter_count(model.parameters())
    guarded("training", lambda: measure_training(model, args, device), results, failures, device)
    guarded("generation", lambda: measure_generation(model, args, device), results, failures, device)
    return results, failures


def run_metadata(args, device: torch.device) -> dict:
    config = model_config(args.shape)
    vision = config.vision_config
    image_tokens = (args.image_size // (vision.patch_size * vision.spatial_merge_size)) ** 2
    return {
        "device": device_description(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "shape": args.shape,
        "teacher_shape": args.teacher_shape,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "gen_batch": args.gen_batch,
        "sequence_tokens": args.prompt_tokens + image_tokens + 2 + args.answer_tokens,
        "prompt_tokens": args.prompt_tokens,
        "image_size": args.image_size,
        "image_tokens": image_tokens,
        "answer_tokens": args.answer_tokens,
        "new_tokens": args.new_tokens,
        "steps": args.steps,
        "warmup": args.warmup,
        "top_k": args.top_k,
        "kd_memory_metric": "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS growth (ru_maxrss)",
        "llm_layers": config.text_config.num_hidden_layers,
        "llm_hidden": config.text_config.hidden_size,
    }


def shown(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, float) else str(value)


def print_table(run: dict) -> None:
    mfu = run["train_mfu"]
    mfu_text = f"{mfu:.1%}" if isinstance(mfu, float) else mfu
    print(
        f"clinkd real-scale benchmark: shape {run['shape']} (KD teacher {run['teacher_shape']}), {run['dtype']}, "
        f"{run['device']}, torch {run['torch']}, transformers {run['transformers']}"
    )
    print(
        f"batch {run['batch_size']} x {run['sequence_tokens']} tokens ({run['prompt_tokens']} prompt, "
        f"{run['image_tokens']} image + 2, {run['answer_tokens']} answer; {run['image_size']} px), "
        f"{run.get('parameters', '?')} parameters, optimiser {run.get('optimizer', '?')}, "
        f"{run['steps']} timed steps after {run['warmup']}; generation {run['gen_batch']} prompts x "
        f"{run['new_tokens']} tokens"
    )
    rows = (
        ("training tokens/s", "train_tokens_per_s", ",.1f"),
        ("training step s", "train_step_s", ".4f"),
        ("training model TFLOP/s", "train_tflops_per_s", ".3f"),
        (
            "training MFU (dense bf16 peak TFLOP/s: " + shown(run.get("peak_bf16_tflops", "n/a"), ".0f") + ")",
            "train_mfu",
            ".1%",
        ),
        (f"KD peak memory MiB, online teacher ({run['kd_memory_metric']})", "kd_online_peak_mib", ",.1f"),
        (f"KD peak memory MiB, cached top-{run['top_k']}", "kd_cached_peak_mib", ",.1f"),
        ("SASG candidates s (beam 3, N = 3, logits)", "sasg_s", ".4f"),
        ("greedy s (same prompts and length)", "greedy_s", ".4f"),
        ("generation tokens/s (greedy, KV cache)", "generate_tokens_per_s", ",.1f"),
    )
    width = max(len(label) for label, _, _ in rows) + 2
    for label, key, spec in rows:
        print(f"{label:<{width}}{shown(run[key], spec):>14}")
    print(
        f"ratios: KD cached/online peak memory {shown(run['kd_cached_over_online'], '.3f')} | "
        f"SASG/greedy time {shown(run['sasg_over_greedy'], '.2f')} | MFU {mfu_text}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["2b", "7b", "reduced"], default="2b")
    parser.add_argument("--teacher-shape", choices=["2b", "7b", "reduced"], help="KD teacher (default: --shape)")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--batch-size", type=int, default=4, help="training and KD batch")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--answer-tokens", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=448, help="square image side in pixels, a multiple of 28")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    parser.add_argument("--optimizer", choices=["auto", "adamw", "sgd"], default="auto")
    parser.add_argument("--top-k", type=int, default=64, help="cached teacher log-probs per answer token")
    parser.add_argument("--gen-batch", type=int, default=4, help="prompts per generate call")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt")
    parser.add_argument("--json", type=Path, help="write every number and the run's settings here")
    parser.add_argument("--kd-variant", choices=KD_VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.image_size % 28 or args.image_size < 28:
        parser.error("--image-size must be a positive multiple of 28 (14 px patches, 2 x 2 merged)")
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    args.teacher_shape = args.teacher_shape or args.shape
    args.torch_dtype = getattr(torch, args.dtype)
    return args


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    if args.kd_variant:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            peak = kd_variant_peak(args, args.kd_variant, device)
        except torch.OutOfMemoryError:
            peak = "OOM"
        print(json.dumps({"peak_mib": peak}))
        return
    results, failures = run_all(args, device)
    run = {**run_metadata(args, device), **results}
    print_table(run)
    if args.json:
        args.json.write_text(json.dumps(run, indent=2))
    if failures:
        sys.exit(f"failed: {', '.join(failures)} (tracebacks above)")


if __name__ == "__main__":
    main()
