"""The recipe configuration: one typed source of truth, loaded from YAML with dotted overrides.

The defaults of :class:`RecipeConfig` are the ClinKD recipe (``configs/default.yaml`` repeats them, tested),
so ``clinkd run`` without a file runs the whole pipeline from any folder. A recipe file (``configs/*.yaml``)
holds fields of :class:`RecipeConfig` plus an optional ``presets:`` mapping of named override sets that adds
to (or replaces one of) the built-in :data:`PRESETS` (``clinkd run --preset quick``). Overrides are
``section.key=value`` strings whose values are parsed as YAML (``train.lr=1e-3``,
``model.path=null``, ``predict.max_new_tokens.VG=40``). Every error names the offending key.
"""

from __future__ import annotations

import re
from dataclasses import asdict, fields
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from clinkd.boxes import ModelBoxStyle
from clinkd.data.records import TASKS
from clinkd.images import PIL_PIXEL_LIMIT
from clinkd.io import unreachable_reason
from clinkd.losses.config import KD_LOSS_PRESETS, KDLossConfig
from clinkd.model.bases import shipped_sizes
from clinkd.model.positions import PAPER, RopeStrategy

_EXPONENT_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")
# numpy seeds must stay below 2**32, and stages add small offsets to the recipe's seed.
MAX_SEED = 2**31 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
KD_LOSS_KEYS = tuple(field.name for field in fields(KDLossConfig))  # distill:'s loss keys (DistillConfig.loss, flat)
# A section whose keys a recipe writes one level up: distill.alpha is DistillConfig.loss.alpha.
FLAT_SECTIONS: tuple[str, ...] = ("distill.loss",)


class ConfigError(ValueError):
    """A recipe that does not load or validate; the message names the key."""


def only_known_tasks(value: dict, known: tuple[str, ...]) -> dict:
    """``value`` when its keys are all in ``known``, else a ValueError naming the others (pydantic adds the key)."""
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}; expected {', '.join(known)}")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # no key takes inf or NaN


class SynthConfig(_Section):
    """Generate the embedded synthetic benchmark into ``data.dir`` when it is missing."""

    enabled: bool = True
    seed: Seed = 0
    images: int = Field(1400, gt=0, description="training images, spread over the 8 modalities")
    test_per_cell: int = Field(25, gt=0, description="test records per (task, modality)")
    image_size: int = Field(112, ge=28)
    turns: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: {"VG": 3, "ROC": 3, "RC": 1, "MIA": 1},
        description="training turns per image and task (a referring task asks at most one per object)",
    )

    @field_validator("turns")
    @classmethod
    def _valid_turn_mix(cls, value: dict[str, int]) -> dict[str, int]:
        from clinkd.synth.generate import validate_turn_mix

        return validate_turn_mix(value)


class DataConfig(_Section):
    dir: Path = Path("data/synth")
    images: Path | None = Field(None, description="image folder; default <dir>/images")
    train_file: str = "train.json"
    synth: SynthConfig = SynthConfig()
    on_error: Literal["skip", "stop"] = "skip"
    box_style: ModelBoxStyle = Field(
        "qwen2-vl",
        description="box/ref markup the model is trained to read and write; Qwen3-VL and Qwen3.5 always use their JSON",
    )
    train_turns: Literal["split", "multi"] = Field(
        "split", description="split: one sample per QA turn (matches the one-turn test files); multi: one per image"
    )
    max_train_samples: int | None = Field(None, gt=0)
    max_test_per_task: int | None = Field(None, gt=0)
    max_image_pixels: int = Field(
        PIL_PIXEL_LIMIT,
        gt=0,
        le=PIL_PIXEL_LIMIT,
        description="an image with more pixels is a data issue (never decoded)",
    )

    @property
    def images_dir(self) -> Path:
        return self.images if self.images is not None else self.dir / "images"


class ModelConfig(_Section):
    path: Path | None = Field(None, description="local checkpoint dir (Qwen2-VL, Qwen2.5-VL or clinkd); null = tiny")
    init: Literal["scratch", "base"] = Field(
        "base",
        description="the tiny model (path null): base = the shipped pretrained base of model.size, scratch = built "
                    "from a config",
    )
    size: Literal["xs", "s", "m"] = "s"
    tokenizer_vocab: int = Field(1024, ge=300)
    min_pixels: int = Field(224 * 224, gt=0, description="64 visual tokens per image at 224×224 (the shipped base's)")
    max_pixels: int = Field(224 * 224, gt=0)
    square_size: int | None = Field(None, ge=28, description="resample every image to N×N (MCG-RoPE's w = h)")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    allow_partial: list[str] = Field(
        default_factory=list,
        description="regexes of weight names that may be missing or unexpected when model.path loads (a new head); "
                    "default: none",
    )

    @model_validator(mode="after")
    def _base_is_shipped(self) -> ModelConfig:
        if self.path is None and self.init == "base" and self.size not in shipped_sizes():
            raise ValueError(
                f"model.init: no shipped base for model.size {self.size!r} (shipped: "
                f"{', '.join(shipped_sizes()) or 'none'}); "
                "use model.init=scratch or build one with clinkd pretrain (docs/pretrain.md)"
            )
        return self


class LoraConfig(_Section):
    """LoRA/QLoRA through peft (``clinkd.model.lora``): adapters on the named linear layers of the unfrozen parts."""

    r: int = Field(16, gt=0, description="adapter rank")
    alpha: float = Field(32.0, gt=0, description="scale alpha/r on the adapter output")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="linear-layer names (last path component); only layers inside parts whose train.freeze_* is false",
    )
    quantize: Literal["none", "4bit", "8bit"] = Field(
        "none", description="QLoRA: load the base in 4/8 bit (bitsandbytes, CUDA)"
    )
    merge: bool = Field(
        True, description="<stage>/model = base with the adapters merged in (the adapter is kept in <stage>/adapter)"
    )


class TrainConfig(_Section):
    epochs: float = Field(
        1.0, gt=0, description="the student's epochs (paper: 2 distillation epochs, then 2 reflective rounds)"
    )
    max_steps: int = Field(-1, ge=-1, description="overrides epochs when > 0")
    batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    scheduler: Literal["cosine", "linear", "constant", "cosine_with_min_lr"] = "cosine"
    max_grad_norm: float = Field(1.0, gt=0)
    freeze_vision_tower: bool = True  # LLaMA-Factory's default for Qwen2-VL; the shipped base's vision is pre-trained
    freeze_merger: bool = True
    freeze_llm: bool = False
    logging_steps: int = Field(20, gt=0)
    save_steps: int = Field(200, gt=0)
    save_total_limit: int = Field(2, gt=0)
    num_workers: int = Field(0, ge=0)
    threads: int | None = Field(None, gt=0, description="torch CPU threads; default = all cores")
    lora: LoraConfig | None = Field(None, description="null = full fine-tuning of the unfrozen parts")
    deepspeed: Path | None = Field(
        None, description="DeepSpeed JSON (configs/deepspeed/zero{2,3}.json); launch with torchrun/accelerate"
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in backward: less memory, ~30% slower"
    )
    retrieval_loss: float = Field(
        1.0,
        ge=0,
        description="weight of the retrieval-attention loss on box answers (0: off; eager attention; docs/pretrain.md)",
    )
    vision_cache_mb: int = Field(
        1024,
        ge=0,
        description="visual tokens kept per training stage while the vision tower and merger are frozen, so each "
                    "image goes through them once (0: off; clinkd.engine.vision_cache)",
    )
    retrieval_layer: int = Field(
        -2, description="text layer whose head the retrieval loss supervises (negative: from the top)"
    )
    retrieval_head: int = Field(0, ge=0, description="the supervised head of that layer")

    @property
    def frozen_parts(self) -> dict[str, bool]:
        """Which parts of the model (``clinkd.model.lora.model_parts``) the ``freeze_*`` knobs freeze."""
        return {"vision_tower": self.freeze_vision_tower, "merger": self.freeze_merger, "llm": self.freeze_llm}


class EndpointConfig(_Section):
    """An OpenAI-compatible chat-completions endpoint (``clinkd.endpoint``): a hosted API, vLLM, SGLang, llama.cpp
    server."""

    base_url: str | None = Field(None, description="the OpenAI client's base URL, e.g. http://127.0.0.1:8000/v1")
    model: str | None = Field(None, description="the served model's name in the requests")
    api_key_env: str | None = Field(
        None, description="env variable holding the key (never written anywhere); null for a keyless local server"
    )
    concurrency: int = Field(4, gt=0, description="requests in flight at once")
    timeout: float = Field(60.0, gt=0, description="seconds per request")
    retries: int = Field(4, ge=0, description="extra attempts after a failed request")
    backoff: float = Field(
        1.0, ge=0, description="seconds before the first retry; doubles at each retry (a Retry-After header wins)"
    )


# How a served model writes boxes (clinkd.model.box_convention.SERVED_SCALES): the scale its coordinates are on.
ServedBoxes = Literal["medgrit", "qwen2.5-vl", "qwen3-vl", "auto"]


class ServedModelConfig(EndpointConfig):
    """A model behind an OpenAI-compatible endpoint, scored like a local one (``clinkd predict --endpoint``,
    docs/served.md)."""

    concurrency: int = Field(8, gt=0, description="requests in flight at once")
    timeout: float = Field(120.0, gt=0, description="seconds per request")
    boxes: ServedBoxes = Field(
        "medgrit",
        description="medgrit/qwen3-vl: 0–1000; qwen2.5-vl: pixels of the resized image; auto: decided per answer",
    )
    min_pixels: int | None = Field(
        None, gt=0, description="the served model's pixel budget (boxes qwen2.5-vl and auto)"
    )
    max_pixels: int | None = Field(None, gt=0)
    instructions: dict[str, str] = Field(
        default_factory=dict, description="text appended to each task's question on a new line, e.g. how to write a box"
    )

    @field_validator("instructions")
    @classmethod
    def _instruction_tasks(cls, value: dict[str, str]) -> dict[str, str]:
        return only_known_tasks(value, TASKS)

    @model_validator(mode="after")
    def _complete_when_used(self) -> ServedModelConfig:
        if self.base_url is not None and not self.model:
            raise ValueError(
                "base_url is set but model is not: name the served model (--served-model, e.g. "
                "Qwen/Qwen2.5-VL-7B-Instruct)"
            )
        if self.boxes in ("qwen2.5-vl", "auto") and (self.min_pixels is None or self.max_pixels is None):
            raise ValueError(
                f"boxes {self.boxes} reads pixels of the image the server resized: set min_pixels and max_pixels to "
                "the "
                "served model's budget (a stock Qwen2.5-VL: 3136 and 12845056)"
            )
        return self


class PredictConfig(_Section):
    batch_size: int = Field(32, gt=0)
    max_new_tokens: dict[str, Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: {"VG": 40, "ROC": 16, "RC": 40, "MIA": 48}
    )
    num_beams: int = Field(1, gt=0)
    endpoint: ServedModelConfig = Field(
        ServedModelConfig(), description="predict through a served model instead of a local one (base_url set)"
    )

    @field_validator("max_new_tokens")
    @classmethod
    def _known_tasks(cls, value: dict[str, int]) -> dict[str, int]:
        return only_known_tasks(value, TASKS)


class EvaluateConfig(_Section):
    """Scoring backends (``clinkd.metrics.backends``) and report options; ``clinkd env`` shows what runs here."""

    meteor: Literal["auto", "java", "nltk", "off"] = Field(
        "auto", description="auto: METEOR 1.5 jar (Java) if available, else meteor-nltk, else none"
    )
    spice: Literal["auto", "official", "approx", "off"] = Field(
        "auto", description="auto: real SPICE 1.0 when the CoreNLP 3.6.0 jars are found, else SPICE-approx"
    )
    corenlp_dir: Path | None = Field(
        None, description="folder with stanford-corenlp-3.6.0{,-models}.jar for real SPICE"
    )
    bird_exact: bool = Field(False, description="score exactly as BiRD's scripts (no end-of-turn pre-step, <box> only)")
    figures: bool = Field(True, description="write the PNG figures (per-modality bars, training loss curves)")


class SimilarityConfig(_Section):
    """How a generated answer is compared with its ground truth (docs/reflect.md)."""

    kind: Literal["lexical", "embedding"] = Field(
        "lexical", description="lexical: content-word F1, no weights; embedding: sentence-transformers cosine"
    )
    path: Path | None = Field(None, description="local sentence-transformers checkpoint dir (kind: embedding)")


class OpenAICorrectorConfig(EndpointConfig):
    """The corrector's endpoint (GPT-4o, vLLM, llama.cpp server)."""

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o"
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="env variable holding the key; null for a keyless local server"
    )
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(256, gt=0)
    cache_dir: Path | None = Field(None, description="reply cache shared by runs; default <output_dir>/cache/corrector")


class ReflectConfig(_Section):
    """Reflective correction training (docs/reflect.md): generate, score, correct the weak outputs, retrain."""

    enabled: bool = True
    rounds: int = Field(2, ge=0)
    threshold: float = Field(0.8, ge=0, le=1, description="outputs whose similarity is below this are corrected")
    iou_threshold: float = Field(
        0.5, ge=0, lt=1, description="a grounding answer also needs every box's IoU above this"
    )
    accept_threshold: float = Field(
        0.8, ge=0, le=1, description="a corrector reply must score at least this against the ground truth"
    )
    generate_samples: int | None = Field(
        256, gt=0, description="training turns generated on per round (fixed seeded subset); null = all"
    )
    budget: int | None = Field(
        128, gt=0, description="most corrections requested per round, worst first; null = no limit"
    )
    train_samples: int | None = Field(
        800, gt=0, description="original training examples per round's epoch (seeded subset); null = all"
    )
    epochs: float = Field(1.0, gt=0, description="epochs over the training mix per round")
    lr: float | None = Field(None, gt=0, description="learning rate of the rounds; null = train.lr")
    score_after: bool = Field(True, description="generate once more after the last round to score the final model")
    similarity: SimilarityConfig = SimilarityConfig()
    corrector: Literal["template", "openai", "none"] = Field(
        "template", description="template: offline rephrasing of the ground truth; none: rounds without corrections"
    )
    openai: OpenAICorrectorConfig = OpenAICorrectorConfig()


class DistillConfig(_Section):
    """Pseudo-Augmented Medical Distillation (``clinkd distill``, docs/distill.md): teacher → pseudo labels → student.

    The KD loss is ``loss``, a :class:`~clinkd.losses.KDLossConfig`, written flat in a recipe: every field of it is a
    key of ``distill:`` (``distill.alpha``, ``distill.temperature``, …) laid over ``preset``'s values; a key left out or
    ``null`` keeps the preset's value. A resolved recipe writes them all.
    """

    enabled: bool = Field(True, description="clinkd run: teacher → pseudo labels → KD student (false: plain SFT)")
    teacher: Path | None = Field(None, description="an existing teacher checkpoint; null = fine-tune one on the subset")
    teacher_fraction: float = Field(0.111, gt=0, le=1, description="share of the train records the teacher is tuned on")
    teacher_init: Path | None = Field(
        None,
        description="checkpoint the teacher is fine-tuned from (paper: Qwen2-VL-7B for a 2B student); "
        "null = model.path",
    )
    teacher_size: Literal["xs", "s", "m"] | None = Field(
        "s", description="tiny teacher size (model.path and teacher_init null); null = model.size"
    )
    teacher_epochs: float | None = Field(3.0, gt=0, description="teacher fine-tuning epochs; null = train.epochs")
    targets: Literal["ground_truth", "pseudo", "both"] = Field(
        "both", description="the student's CE targets: the GT answers, the teacher's answers, or both sets"
    )
    pseudo_fraction: float = Field(
        0.111, gt=0, le=1, description="share of the train records the teacher answers (seeded; paper: 30K of 270K)"
    )
    pseudo_max_new_tokens: int | None = Field(None, gt=0, description="null = the largest predict.max_new_tokens")
    pseudo_filter: bool = Field(
        True,
        description="drop pseudo labels that name another structure than their turn, or lack a box where it needs one",
    )
    min_margin: float = Field(
        0.0,
        ge=0,
        le=1,
        description="drop pseudo labels whose mean top-1 − top-2 token probability is below this (0: keep all)",
    )
    curriculum: bool = Field(
        False,
        description="order the student's examples so that the most confident pseudo labels come first "
        "(docs/distill.md)",
    )
    mode: Literal["online", "cached"] = Field(
        "cached", description="online: teacher forward every step; cached: one pass to top-k log-probs on disk"
    )
    top_k: int = Field(64, gt=0, description="teacher log-probs kept per answer token in cached mode")
    cache_dir: Path | None = Field(None, description="cached-mode folder; null = <run>/distill/cache")
    cache_shard_examples: int = Field(1024, gt=0, description="examples per safetensors shard of the cache")
    preset: Literal[tuple(KD_LOSS_PRESETS)] = Field(
        "paper", description="the KD loss the other distill: loss keys start from"
    )
    loss: KDLossConfig = Field(
        default_factory=KD_LOSS_PRESETS["paper"], description="written flat: distill.alpha, distill.temperature, ..."
    )

    @model_validator(mode="before")
    @classmethod
    def _loss_keys_over_the_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if "loss" in data:
            raise ValueError("loss: write the KD loss keys flat, e.g. distill.alpha, not distill.loss.alpha")
        data = dict(data)
        given = {name: data.pop(name) for name in KD_LOSS_KEYS if name in data}
        start = KD_LOSS_PRESETS.get(
            data.get("preset", "paper")
        )  # an unknown preset: its own error, from the preset key
        data["loss"] = {
            **(asdict(start()) if start else {}),
            **{name: value for name, value in given.items() if value is not None},
        }
        return data

    @model_serializer(mode="wrap")
    def _loss_keys_flat(self, handler) -> dict:
        tree = handler(self)
        loss = tree.pop("loss")
        return {**tree, **loss}


class ClipTrainConfig(_Section):
    """The embedded Med-CLIP (``clinkd clip-train``, docs/sasg.md): a small HF CLIPModel trained from scratch
    on the train split's image–text pairs (whole images ↔ findings, box crops ↔ region texts)."""

    hidden: int = Field(128, gt=0, description="width of both towers")
    layers: int = Field(2, gt=0, description="transformer layers per tower")
    heads: int = Field(4, gt=0)
    projection: int = Field(64, gt=0, description="joint embedding size")
    image_size: int = Field(64, ge=8, description="CLIP input side; crops and whole images are resized to it")
    patch_size: int = Field(16, gt=0, description="64 px / 16 = a 4×4 patch grid")
    context_length: int = Field(64, ge=8, description="text tokens, end token included")
    steps: int = Field(
        300, gt=0, description="held-out matching rate 0.98 on the default synthetic data (docs/sasg.md)"
    )
    batch_size: int = Field(64, ge=2, description="128 scored the same in SASG at twice the cost (docs/sasg.md)")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    crop_margin: float = Field(
        0.1, ge=0, description="context kept around a box, as a fraction of its side (train and select)"
    )
    jitter: float = Field(
        0.1, ge=0, description="random shift of each crop edge while training, as a fraction of the box side"
    )
    threads: int | None = Field(None, gt=0, description="torch CPU threads; default = all cores")


class SelectConfig(_Section):
    """How the final answer is chosen (docs/sasg.md). ``sasg``: N candidates in one generate call per batch,
    each scored by a Med-CLIP against the image (or the referred crop), highest calibrated score wins."""

    method: Literal["greedy", "beam", "sasg"] = Field(
        "sasg", description="greedy: predict.num_beams top-1; beam: num_beams top-1; sasg: CLIP-selected candidate"
    )
    candidates: Literal["beam", "sample"] = Field("beam", description="sasg candidates: beam search or sampling")
    num_beams: int = Field(3, gt=0)
    num_return_sequences: int = Field(3, gt=0, description="N candidates per input")
    temperature: float = Field(0.7, gt=0, description="candidates: sample")
    top_p: float = Field(0.9, gt=0, le=1, description="candidates: sample")
    scorer: Literal["embedded", "hf", "open_clip"] = Field(
        "embedded",
        description="embedded: the CLIP clinkd clip-train writes; hf: a CLIPModel dir; open_clip: e.g. BiomedCLIP",
    )
    scorer_path: Path | None = Field(None, description="scorer directory; null = <run>/clip (embedded only)")
    tie_break: Literal["logprob", "none"] = Field(
        "logprob",
        description="among candidates within tie_margin of the best CLIP probability: highest log-prob, or beam order",
    )
    tie_margin: float = Field(0.0, ge=0, le=1, description="in calibrated (softmax) probability; 0 = exact ties only")

    @field_validator("num_return_sequences")
    @classmethod
    def _at_most_num_beams(cls, value: int, info) -> int:
        if info.data.get("candidates") == "beam" and value > info.data.get("num_beams", value):
            raise ValueError(
                f"{value} exceeds num_beams={info.data['num_beams']}: beam search returns at most num_beams sequences"
            )
        return value


class ReportConfig(_Section):
    """Extra rows of the run report, each predicted greedily on the same test set (``clinkd run``)."""

    teacher: bool = Field(True, description="the distillation teacher (when distill.enabled)")
    student: bool = Field(True, description="the distilled student before reflective correction and selection")
    sft_baseline: bool = Field(
        False,
        description="a plain-SFT model trained from the same initialisation for the KD student's optimiser steps "
                    "(costs one training)",
    )
    greedy: bool = Field(
        False,
        description="the final model decoded greedily (select.method sasg or beam): what the selection adds, on the "
                    "same model",
    )


# The turn kinds of the pre-training corpus (clinkd.pretrain.corpus writes one generator per kind).
PRETRAIN_TASKS: tuple[str, ...] = ("grounding", "referring", "counting", "captioning")


class PretrainConfig(_Section):
    """Generic grounding pre-training of the tiny base (``clinkd pretrain``, docs/pretrain.md): a dense vision stage,
    then SFT on fresh scenes of a synthetic corpus that shares nothing with the benchmark. The size is
    ``model.size``."""

    seed: Seed = Field(0, description="seed of the scenes, the initialisation and the held-out set")
    steps: int = Field(3000, gt=0, description="language-stage optimiser steps, fresh scenes every step")
    dense_steps: int = Field(500, ge=0, description="dense vision steps before the language stage (0: none)")
    unfreeze_after: int | None = Field(
        None,
        ge=0,
        description="language step from which the vision tower and merger train too; null: frozen throughout",
    )
    look: Literal["colour", "tissue", "scan"] = Field(
        "colour",
        description="colour: bright coloured shapes on a dim ground; tissue: grey-level and texture classes in "
                    "textured tissue, "
        "many smaller than a token cell; scan: such classes on the benchmark's eight kinds of canvas, with a medical "
        "tokenizer vocabulary",
    )
    max_objects: int = Field(3, ge=1, le=6, description="most objects per scene")
    curriculum_steps: int = Field(
        1000,
        ge=0,
        description="language steps over which the objects per scene grow from 1 to max_objects (0: max_objects from "
                    "the start)",
    )
    image_size: int = Field(
        112, ge=56, description="scene side in pixels (model.min_pixels/max_pixels still set the model's input)"
    )
    batch_size: int = Field(16, gt=0, description="scenes per step, in both stages")
    lr: float = Field(1e-3, gt=0, description="peak learning rate of both stages (AdamW, cosine)")
    save_steps: int = Field(
        500, gt=0, description="language-stage checkpoint interval (train.save_total_limit are kept)"
    )
    eval_steps: int | None = Field(
        None, gt=0, description="held-out grounding recall every N language steps; null: at the end only"
    )
    eval_scenes: int = Field(100, gt=0, description="held-out scenes (a fixed seeded set) for the recall")
    tasks: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {"grounding": 0.5, "referring": 0.2, "counting": 0.15, "captioning": 0.15},
        description="share of each task among the language-stage turns (weights, normalised)",
    )
    out: Path | None = Field(None, description="output folder; null: <output_dir>/pretrain")

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, value: dict[str, float]) -> dict[str, float]:
        only_known_tasks(value, PRETRAIN_TASKS)
        if not sum(value.values()) > 0:
            raise ValueError(f"weights must not all be 0, got {value}")
        return value


class RecipeConfig(_Section):
    name: str = "default"
    seed: Seed = 0
    output_dir: Path = Path("runs")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    rope: RopeStrategy = Field(PAPER, description="M-RoPE position strategy recorded in the trained model's config")
    train: TrainConfig = TrainConfig()
    predict: PredictConfig = PredictConfig()
    reflect: ReflectConfig = ReflectConfig()
    distill: DistillConfig = DistillConfig()
    clip: ClipTrainConfig = ClipTrainConfig()
    select: SelectConfig = SelectConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    report: ReportConfig = ReportConfig()
    pretrain: PretrainConfig = PretrainConfig()

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name


# Named override sets, merged before the command-line overrides (``--preset quick``).
PRESETS: dict[str, dict] = {
    "quick": {  # CI-sized: a few minutes on 2 cores, exercises every stage
        "name": "quick",
        "data": {"dir": "data/synth-quick", "synth": {"images": 64, "test_per_cell": 2}},
        "model": {"init": "scratch", "size": "xs", "tokenizer_vocab": 512, "min_pixels": 12544, "max_pixels": 12544},
        "train": {
            "epochs": 1,
            "batch_size": 8,
            "logging_steps": 5,
            "save_steps": 20,
            "freeze_vision_tower": False,  # from scratch every part learns
            "freeze_merger": False,
            "retrieval_loss": 0.0,  # runs on every family (the Qwen3 ones have no box tokens to supervise)
        },
        "distill": {"teacher_epochs": 1, "top_k": 16},
        "reflect": {"generate_samples": 32, "budget": 16, "train_samples": 64},
        "clip": {"steps": 20, "batch_size": 32},
    },
}


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-3"`` → ``(["train", "lr"], 0.001)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {error}") from error
    if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value):
        value = float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
    return key.strip().split("."), value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Set each dotted key in a nested dict (creating sections as needed)."""
    for text in overrides:
        path, value = parse_override(text)
        node = tree
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(path[: depth + 1])} is a value, not a section (in {text!r})")
            node = child
        node[path[-1]] = value
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] = (), preset: str | None = None) -> RecipeConfig:
    """Load a recipe: the code defaults, then the file, then the named preset, then the dotted overrides."""
    tree: dict = {}
    if path is not None:
        tree = _read_yaml(Path(path))
    presets = {**PRESETS, **(tree.pop("presets", {}) or {})}
    if preset is not None:
        if preset not in presets:
            where = f"built in or in {path}" if path else "built in"
            raise ConfigError(f"preset {preset!r} is not defined ({where}: {', '.join(presets)})")
        tree = _deep_merge(tree, presets[preset])
    tree = apply_overrides(tree, list(overrides))
    return validate_tree(tree, source=str(path) if path else "defaults")


def validate_tree(tree: dict, source: str = "config") -> RecipeConfig:
    try:
        return RecipeConfig.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(f"{source}: " + "; ".join(_describe(item) for item in error.errors())) from None


def dump_config(config: RecipeConfig) -> str:
    """The resolved recipe as YAML, loadable again with :func:`load_config`."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def preset_names(path: str | Path | None = None) -> list[str]:
    """The built-in presets and those of the recipe file ``path``."""
    return list({**PRESETS, **((_read_yaml(Path(path)).get("presets") or {}) if path else {})})


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} {unreachable_reason(path) or 'is not a file'}")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: malformed YAML: {error}") from error
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(tree).__name__}")
    return tree


def _deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def flat_key(key: str) -> str:
    """A validated key as a recipe writes it: ``distill.loss.alpha`` → ``distill.alpha`` (:data:`FLAT_SECTIONS`)."""
    for section in FLAT_SECTIONS:
        if key.startswith(section + "."):
            return section.rsplit(".", 1)[0] + key[len(section) :]
    return key


def _describe(item: dict) -> str:
    key = flat_key(".".join(str(part) for part in item["loc"])) or "(root)"
    if item["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    return f"{key}: {item['msg']}"
