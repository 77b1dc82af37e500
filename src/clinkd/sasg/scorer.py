"""Med-CLIP scorers: how well a text describes an image, as CLIP's scaled cosine ``s = τ · cos(f(I), g(T))``.

Implementations of :class:`MedClipScorer`:

* :class:`HFClipScorer` — a local transformers ``CLIPModel`` directory: the embedded default that
  ``clinkd clip-train`` writes, or any converted CLIP checkpoint with its tokenizer and
  ``preprocessor_config.json``;
* :class:`OpenClipScorer` — a local open_clip / BiomedCLIP checkpoint (``open_clip_config.json`` +
  weights), through the optional ``clinkd[biomedclip]`` extra; open_clip is imported only when used.

Image preprocessing is done here with PIL and numpy (no torchvision), following the checkpoint's
``preprocessor_config.json`` (CLIPImageProcessor fields).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clinkd.config import ConfigError
from clinkd.model.loading import folder_damage

SCORER_KINDS = ("embedded", "hf", "open_clip")
PREPROCESSOR_FILE = "preprocessor_config.json"
# OpenAI CLIP's normalisation (the HF CLIPImageProcessor defaults).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BICUBIC = 3  # PIL's resample code, as CLIPImageProcessor stores it


class ScorerError(ConfigError):
    """A scorer that cannot be loaded: missing directory or file, or a missing optional dependency
    (a :class:`~clinkd.config.ConfigError`, so the CLI reports it as one line)."""


@dataclass(frozen=True)
class ImagePrep:
    """CLIP input preparation: resize (shortest edge + centre crop, or straight to a square), scale to
    [0, 1], normalise per channel: ``x = (pixel/255 − mean) / std``."""

    size: int
    center_crop: bool = False
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``[n, 3, size, size]`` float32."""
        arrays = [np.asarray(self._resize(image.convert("RGB")), dtype=np.float32) for image in images]
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).div_(255.0)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (batch - mean) / std

    def _resize(self, image: Image.Image) -> Image.Image:
        if not self.center_crop:
            return image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        width, height = image.size
        scale = self.size / min(width, height)
        resized = image.resize(
            (max(self.size, round(width * scale)), max(self.size, round(height * scale))), Image.Resampling.BICUBIC
        )
        left = (resized.width - self.size) // 2
        top = (resized.height - self.size) // 2
        return resized.crop((left, top, left + self.size, top + self.size))

    def to_preprocessor_config(self) -> dict:
        """The same preparation in CLIPImageProcessor's format (``size`` as height/width means no crop)."""
        size = {"shortest_edge": self.size} if self.center_crop else {"height": self.size, "width": self.size}
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": size,
            "resample": BICUBIC,
            "do_center_crop": self.center_crop,
            "crop_size": {"height": self.size, "width": self.size},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_convert_rgb": True,
        }

    @classmethod
    def from_preprocessor_config(cls, config: dict, source: str = "preprocessor config") -> "ImagePrep":
        size = config.get("size", {})
        if isinstance(size, int):
            size = {"shortest_edge": size}
        center_crop = bool(config.get("do_center_crop", "shortest_edge" in size))
        crop = config.get("crop_size", {})
        crop_side = crop.get("height") if isinstance(crop, dict) else crop
        side = crop_side if center_crop and crop_side else size.get("height", size.get("shortest_edge"))
        if not side:
            raise ScorerError(f"{source}: no image size in 'size' or 'crop_size'")
        return cls(
            size=int(side),
            center_crop=center_crop,
            mean=tuple(config.get("image_mean", CLIP_MEAN)),
            std=tuple(config.get("image_std", CLIP_STD)),
        )


class MedClipScorer(ABC):
    """Scores aligned (image, text) pairs with CLIP's similarity ``s = τ · cos(f(I), g(T))``, where
    ``τ = exp(logit_scale)`` is the model's learned temperature, the same scale its contrastive
    training used (so a softmax over ``s`` is CLIP's own matching probability)."""

    batch_size: int = 64

    @property
    @abstractmethod
    def logit_scale(self) -> float:
        """τ."""

    @abstractmethod
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``[n, d]`` unit-norm image embeddings (on the CPU)."""

    @abstractmethod
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """``[n, d]`` unit-norm text embeddings (on the CPU)."""

    @torch.inference_mode()
    def score_pairs(self, images: Sequence[Image.Image], texts: Sequence[str]) -> torch.Tensor:
        """``s_i = τ · ⟨f(images[i]), g(texts[i])⟩``, ``[n]``. Each distinct image object and text is
        embedded once (SASG asks about one crop with N texts, or one text with N crops)."""
        if len(images) != len(texts):
            raise ValueError(f"score_pairs needs as many images as texts, got {len(images)} and {len(texts)}")
        if not images:
            return torch.zeros(0)
        image_firsts, image_rows = _dedupe(images, key=id)
        text_firsts, text_rows = _dedupe(texts, key=lambda text: text)
        image_embeds = self._batched(self.embed_images, [images[i] for i in image_firsts])
        text_embeds = self._batched(self.embed_texts, [texts[i] for i in text_firsts])
        left, right = image_embeds[image_rows], text_embeds[text_rows]
        return self.logit_scale * (left * right).sum(dim=-1)

    def _batched(self, embed, items: list) -> torch.Tensor:
        return torch.cat(
            [embed(items[start : start + self.batch_size]) for start in range(0, len(items), self.batch_size)]
        )


def encode_texts(
    tokenizer, texts: Sequence[str], context_length: int, end_id: int, pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` with every row ending in ``end_id``.

    HF CLIP pools the text at the first ``eos_token_id``, so the end token is appended when the
    tokenizer does not add it itself (our BPE adds nothing; real CLIP tokenizers add it), and a
    too-long text is cut to ``context_length − 1`` tokens before it.
    """
    rows = []
    for ids in tokenizer(list(texts))["input_ids"]:
        ids = list(ids)
        if ids and ids[-1] == end_id:
            ids = ids[:-1]
        rows.append(ids[: context_length - 1] + [end_id])
    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


class HFClipScorer(MedClipScorer):
    """A transformers ``CLIPModel`` with its tokenizer and image preparation, from a local directory."""

    def __init__(self, model, tokenizer, prep: ImagePrep, device: str | torch.device = "cpu", batch_size: int = 64):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.prep = prep
        self.device = torch.device(device)
        self.batch_size = batch_size
        text_config = model.config.text_config
        self.context_length = text_config.max_position_embeddings
        self.end_id = text_config.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_id

    @classmethod
    def from_dir(cls, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 64) -> "HFClipScorer":
        from transformers import AutoTokenizer, CLIPModel

        path = Path(path)
        for name in ("config.json", PREPROCESSOR_FILE):
            if not (path / name).is_file():
                raise ScorerError(
                    f"{path} is not a CLIP checkpoint directory: no {name} (train one with `clinkd clip-train`)"
                )
        model = CLIPModel.from_pretrained(str(path), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        config = json.loads((path / PREPROCESSOR_FILE).read_text(encoding="utf-8"))
        return cls(
            model,
            tokenizer,
            ImagePrep.from_preprocessor_config(config, str(path / PREPROCESSOR_FILE)),
            device,
            batch_size,
        )

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.prep(images).to(self.device)
        return _unit(self.model.get_image_features(pixel_values=pixels).pooler_output).cpu()

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        batch = encode_texts(self.tokenizer, texts, self.context_length, self.end_id, self.pad_id)
        batch = {key: value.to(self.device) for key, value in batch.items()}
        return _unit(self.model.get_text_features(**batch).pooler_output).cpu()


# open_clip imports torchvision at module level; the CUDA torchvision wheel (the only one on PyPI)
# lacks these ops on a CPU torch and fails at import unless they are declared first.
_TORCHVISION_OPS = ("nms", "qnms")


def _declare_torchvision_ops() -> None:
    for op in _TORCHVISION_OPS:
        try:
            torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except RuntimeError:
            pass  # already declared (a working torchvision, or a second load)


class OpenClipScorer(MedClipScorer):
    """An open_clip model (e.g. BiomedCLIP) from a local ``open_clip_config.json`` + weights directory."""

    def __init__(self, model, tokenizer, preprocess, device: str | torch.device = "cpu", batch_size: int = 64):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.device = torch.device(device)
        self.batch_size = batch_size

    @classmethod
    def from_dir(cls, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 64) -> "OpenClipScorer":
        path = Path(path)
        if not (path / "open_clip_config.json").is_file():
            raise ScorerError(f"{path} is not an open_clip checkpoint directory: no open_clip_config.json")
        _declare_torchvision_ops()
        try:
            import open_clip
        except ImportError as error:
            raise ScorerError(
                f"select.scorer=open_clip needs open_clip ({error}); install the optional extra: "
                "pip install 'clinkd[biomedclip]' (see docs/sasg.md for a CPU-only install)"
            ) from None
        model, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{path}", device=str(device))
        tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
        return cls(model, tokenizer, preprocess, device, batch_size)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = torch.stack([self.preprocess(image.convert("RGB")) for image in images]).to(self.device)
        return _unit(self.model.encode_image(pixels)).cpu()

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return _unit(self.model.encode_text(self.tokenizer(list(texts)).to(self.device))).cpu()


def _dedupe(items: Sequence, key) -> tuple[list[int], list[int]]:
    """Positions of the distinct items (first occurrences), and per item the row of its distinct item."""
    rows: dict = {}
    firsts: list[int] = []
    inverse = []
    for position, item in enumerate(items):
        if key(item) not in rows:
            rows[key(item)] = len(firsts)
            firsts.append(position)
        inverse.append(rows[key(item)])
    return firsts, inverse


def _unit(embeds: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(embeds.float(), dim=-1)


def load_scorer(kind: str, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 64) -> MedClipScorer:
    """``embedded`` and ``hf``: a transformers CLIPModel directory; ``open_clip``: an open_clip one."""
    path = Path(path)
    if not path.is_dir():
        hint = " (train it with `clinkd clip-train`)" if kind == "embedded" else ""
        raise ScorerError(f"select.scorer={kind}: directory {path} does not exist{hint}")
    damaged = folder_damage(path)
    if damaged is not None:
        raise ScorerError(f"select.scorer={kind}: {damaged}")
    if kind in ("embedded", "hf"):
        return HFClipScorer.from_dir(path, device, batch_size)
    if kind == "open_clip":
        return OpenClipScorer.from_dir(path, device, batch_size)
    raise ScorerError(f"select.scorer: unknown kind {kind!r}; expected one of {', '.join(SCORER_KINDS)}")
