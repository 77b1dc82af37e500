"""The embedded Med-CLIP: a small transformers ``CLIPModel`` trained from scratch on the dataset's own pairs.

Pairs come from every training turn through :func:`clinkd.sasg.views.answer_views` (the same rule SASG
scores with): whole images ↔ MIA findings, the question's box crop ↔ ROC class names and RC region
descriptions, the answer's box crop ↔ the VG referred phrase. The text tower reuses the captioning
model's tokenizer; ``<|im_end|>`` is appended to every text and is the text config's ``eos_token_id``,
because HF CLIP pools the text at the first end token.

Loss: the symmetric CLIP InfoNCE with *multi-positive* targets, because many pairs in a batch share a
text (``liver`` crops from different images):

    S = τ · I Tᵀ (unit-norm rows),   Y_ij = [t_i = t_j] / Σ_k [t_i = t_k]
    L = ½ ( CE(S, Y) + CE(Sᵀ, Y) ),  CE(S, Y) = −(1/B) Σ_i Σ_j Y_ij log softmax_j(S_i·)

With all texts distinct, Y = I and this is CLIP's loss exactly. While training, each crop's edges move by
up to ``jitter`` × the box side (SASG crops predicted boxes, which are never exact).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch

from clinkd.boxes import SCALE, Box
from clinkd.chat import TURN_END
from clinkd.config import ClipTrainConfig
from clinkd.data.records import Sample
from clinkd.images import VIEW_PIXELS
from clinkd.io import atomic_write_json, match_umask
from clinkd.model.processor import load_image
from clinkd.sasg.scorer import PREPROCESSOR_FILE, ImagePrep, MedClipScorer, encode_texts
from clinkd.sasg.views import TASK_KINDS, answer_views, crop, turn_kind

TRAIN_LOG = "clip_train.json"
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp on τ
IMAGE_CACHE = 4096  # decoded images kept in memory while training


@dataclass(frozen=True)
class ClipPair:
    """An image (or a box of it) and a text that describes it; ``kind`` is the view kind (image/region/grounding)."""

    image: Path
    box: Box | None
    text: str
    kind: str


@dataclass(frozen=True)
class ClipTrainResult:
    model_dir: Path
    steps: int
    pairs: int
    final_loss: float
    seconds: float


def sample_pairs(samples: Sequence[Sample]) -> list[ClipPair]:
    """Every (view, text) pair of ``samples``' turns. Test samples use their task's view kind; untagged
    training turns use :func:`turn_kind`. Turns without a view (a VG answer without a valid box) or
    with an empty text are left out."""
    pairs = []
    for sample in samples:
        for turn in sample.turns:
            kind = TASK_KINDS[sample.task] if sample.task else turn_kind(turn)
            for view in answer_views(kind, turn.question, turn.answer) or []:
                if view.text:
                    pairs.append(ClipPair(sample.image, view.box, view.text, kind))
    return pairs


def clip_model_config(tokenizer, cfg: ClipTrainConfig):
    """A ``CLIPConfig`` of ``cfg``'s size over ``tokenizer``'s vocabulary, pooling text at ``<|im_end|>``."""
    from transformers import CLIPConfig

    end_id = tokenizer.convert_tokens_to_ids(TURN_END)
    if end_id is None or end_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {TURN_END} token to end CLIP texts with")
    tower = dict(
        hidden_size=cfg.hidden,
        intermediate_size=4 * cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
    )
    return CLIPConfig(
        text_config=dict(
            tower,
            vocab_size=len(tokenizer),
            max_position_embeddings=cfg.context_length,
            eos_token_id=end_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(tower, image_size=cfg.image_size, patch_size=cfg.patch_size, num_channels=3),
        projection_dim=cfg.projection,
    )


def multi_positive_clip_loss(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, groups: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """½(CE(S, Y) + CE(Sᵀ, Y)) with ``S = scale · I Tᵀ`` and ``Y_ij = [g_i = g_j] / Σ_k [g_i = g_k]``
    (``Y`` is symmetric); the embeddings must be unit-norm."""
    logits = scale * image_embeds @ text_embeds.T
    same = (groups[:, None] == groups[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    image_to_text = -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
    text_to_image = -(targets * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
    return (image_to_text + text_to_image) / 2


def jittered(box: Box | None, rng: np.random.Generator, jitter: float) -> Box | None:
    """``box`` with each edge moved by ``U(−jitter, jitter)`` × its side, clipped to the image; at least
    one scale unit wide and tall."""
    if box is None or jitter == 0:
        return box
    width, height = box.x2 - box.x1, box.y2 - box.y1
    dx1, dy1, dx2, dy2 = rng.uniform(-jitter, jitter, size=4) * (width, height, width, height)
    x1 = min(max(0.0, box.x1 + dx1), SCALE - 1)
    y1 = min(max(0.0, box.y1 + dy1), SCALE - 1)
    return Box(x1, y1, min(SCALE, max(x1 + 1, box.x2 + dx2)), min(SCALE, max(y1 + 1, box.y2 + dy2)))


def _group_ids(texts: Sequence[str]) -> torch.Tensor:
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(text, len(ids)) for text in texts])


def _decay_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (weights and embeddings), not on norms, biases or τ."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def train_clip(
    pairs: Sequence[ClipPair],
    tokenizer,
    cfg: ClipTrainConfig,
    out_dir: Path,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> ClipTrainResult:
    """Train a CLIP on ``pairs`` for ``cfg.steps`` steps (AdamW, linear warm-up then cosine decay) and save it,
    with its tokenizer and ``preprocessor_config.json``, to ``out_dir`` (written to a sibling, then renamed).
    Batches walk seeded permutations of the pairs; ``on_step(step, loss)`` is called after each step."""
    from transformers import CLIPModel, get_cosine_schedule_with_warmup

    if len(pairs) < 2:
        raise ValueError(f"clip-train needs at least 2 image–text pairs, got {len(pairs)}")
    started = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = CLIPModel(clip_model_config(tokenizer, cfg)).train()
    prep = ImagePrep(cfg.image_size)
    text_config = model.config.text_config
    optimizer = torch.optim.AdamW(_decay_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    schedule = get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * cfg.steps), cfg.steps)
    image = lru_cache(maxsize=IMAGE_CACHE)(partial(load_image, max_pixels=VIEW_PIXELS))
    batch_size = min(cfg.batch_size, len(pairs))
    order: list[int] = []
    losses = []
    for step in range(1, cfg.steps + 1):
        if len(order) < batch_size:
            order.extend(rng.permutation(len(pairs)).tolist())
        batch = [pairs[i] for i in order[:batch_size]]
        del order[:batch_size]
        pixels = prep([crop(image(pair.image), jittered(pair.box, rng, cfg.jitter), cfg.crop_margin) for pair in batch])
        texts = encode_texts(
            tokenizer,
            [pair.text for pair in batch],
            text_config.max_position_embeddings,
            text_config.eos_token_id,
            tokenizer.pad_token_id,
        )
        image_embeds = torch.nn.functional.normalize(
            model.get_image_features(pixel_values=pixels).pooler_output, dim=-1
        )
        text_embeds = torch.nn.functional.normalize(model.get_text_features(**texts).pooler_output, dim=-1)
        loss = multi_positive_clip_loss(
            image_embeds, text_embeds, _group_ids([pair.text for pair in batch]), model.logit_scale.exp()
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    seconds = time.perf_counter() - started
    _save(
        model.eval(),
        tokenizer,
        prep,
        out_dir,
        {
            "config": cfg.model_dump(mode="json"),
            "seed": seed,
            "pairs": len(pairs),
            "pairs_per_kind": {kind: sum(p.kind == kind for p in pairs) for kind in sorted({p.kind for p in pairs})},
            "seconds": round(seconds, 2),
            "losses": [round(value, 5) for value in losses],
        },
    )
    return ClipTrainResult(out_dir, cfg.steps, len(pairs), losses[-1], seconds)


def _save(model, tokenizer, prep: ImagePrep, out_dir: Path, log: dict) -> None:
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    atomic_write_json(staging / PREPROCESSOR_FILE, prep.to_preprocessor_config())
    atomic_write_json(staging / TRAIN_LOG, log)
    match_umask(staging)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)


def is_trained(out_dir: Path) -> bool:
    """A finished ``clip-train`` directory (the train log is written last, before the rename)."""
    return (Path(out_dir) / TRAIN_LOG).is_file() and (Path(out_dir) / "config.json").is_file()


@torch.inference_mode()
def matching_rate(scorer: MedClipScorer, pairs: Sequence[ClipPair], margin: float, seed: int = 0) -> dict[str, float]:
    """How often ``s(view_i, text_i) > s(view_i, text_j)`` for a mismatched text ``j``: drawn (seeded) among
    the pairs of the same kind whose text differs. Per kind and ``all``; pairs without any mismatch are skipped."""
    rng = np.random.default_rng(seed)
    views, true_texts, wrong_texts, kinds = [], [], [], []
    for pair in pairs:
        others = [other.text for other in pairs if other.kind == pair.kind and other.text != pair.text]
        if not others:
            continue
        view = crop(load_image(pair.image, max_pixels=VIEW_PIXELS), pair.box, margin)
        views.append(view)
        true_texts.append(pair.text)
        wrong_texts.append(others[int(rng.integers(len(others)))])
        kinds.append(pair.kind)
    if not views:
        return {}
    wins = (scorer.score_pairs(views, true_texts) > scorer.score_pairs(views, wrong_texts)).tolist()
    rates = {kind: float(np.mean([w for w, k in zip(wins, kinds) if k == kind])) for kind in sorted(set(kinds))}
    rates["all"] = float(np.mean(wins))
    return rates
