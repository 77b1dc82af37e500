"""The tiny bases shipped with clinkd (``model.init: base``): made by ``clinkd pretrain``, one folder per size.

``<size>/`` is a clinkd checkpoint (bfloat16 weights, the base's own tokenizer and processor) plus
``README.md`` (the model card), ``base.json`` (its pre-training record and the weights' sha256) and
``pretrain.yaml`` (the resolved recipe that rebuilds it). docs/pretrain.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

BASES_DIR = Path(__file__).resolve().parent.parent / "assets" / "bases"
RECORD_FILE = "base.json"
WEIGHTS_FILE = "model.safetensors"


def shipped_sizes() -> list[str]:
    """The ``model.size`` values with a shipped base."""
    return (
        sorted(path.name for path in BASES_DIR.iterdir() if (path / RECORD_FILE).is_file())
        if BASES_DIR.is_dir()
        else []
    )


def base_dir(size: str) -> Path:
    """The shipped base of ``size``, its weights checked against the sha256 its record holds."""
    folder = BASES_DIR / size
    if not (folder / RECORD_FILE).is_file():
        raise FileNotFoundError(
            f"no shipped base for model.size {size!r} (shipped: {', '.join(shipped_sizes()) or 'none'})"
        )
    expected = json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))["sha256"]
    found = file_sha256(folder / WEIGHTS_FILE)
    if found != expected:  # a Git LFS pointer or a damaged file loads as garbage or not at all
        raise ValueError(
            f"{folder / WEIGHTS_FILE}: sha256 {found} is not the recorded {expected}; reinstall clinkd or rebuild the "
            "base"
        )
    return folder


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
