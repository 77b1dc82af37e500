"""Choosing the caption-metric backends of an evaluation: METEOR and SPICE next to the built-in three.

``meteor``: ``auto`` (the Java jar where Java runs, else ``meteor-nltk`` where NLTK and WordNet are
there, else none), ``java``, ``nltk`` or ``off``. ``spice``: ``auto`` (the real SPICE where
:func:`clinkd.metrics.spice.spice_missing` is empty, else ``SPICE-approx``), ``official``, ``approx`` or
``off``. A backend asked for by name that cannot run raises :class:`BackendUnavailable` with what is
missing; ``auto`` falls back and the report's backend table says which one ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clinkd.metrics.captions import BUILTIN_SCORERS, CaptionScorer
from clinkd.metrics.meteor import BackendUnavailable, MeteorJava, MeteorNLTK, meteor_java_missing
from clinkd.metrics.spice import SpiceApprox, SpiceJava, spice_missing

METEOR_CHOICES = ("auto", "java", "nltk", "off")
SPICE_CHOICES = ("auto", "official", "approx", "off")

_shared_meteor: MeteorJava | None = None


@dataclass(frozen=True)
class BackendChoice:
    """What to run; mirrors the ``evaluate:`` config section."""

    meteor: str = "auto"
    spice: str = "auto"
    corenlp_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.meteor not in METEOR_CHOICES:
            raise ValueError(f"meteor backend {self.meteor!r}: expected one of {', '.join(METEOR_CHOICES)}")
        if self.spice not in SPICE_CHOICES:
            raise ValueError(f"spice backend {self.spice!r}: expected one of {', '.join(SPICE_CHOICES)}")


def shared_meteor_java() -> MeteorJava:
    """One :class:`MeteorJava` per process, so every evaluation (model, baselines, later runs) shares its JVM."""
    global _shared_meteor
    if _shared_meteor is None:
        _shared_meteor = MeteorJava()
    return _shared_meteor


def meteor_scorer(choice: str) -> CaptionScorer | None:
    if choice == "off":
        return None
    if choice == "java" or (choice == "auto" and not meteor_java_missing()):
        return shared_meteor_java()
    try:
        return MeteorNLTK()
    except BackendUnavailable as missing:
        if choice == "nltk":
            raise
        from clinkd.progress import console

        console.print(
            f"METEOR not run here (no Java; {missing}): MIA is scored with mBR, mBMR without METEOR",
            markup=False,
            soft_wrap=True,
        )
        return None


def spice_scorer(choice: str, corenlp_dir: Path | None = None) -> CaptionScorer | None:
    if choice == "off":
        return None
    if choice == "official" or (choice == "auto" and not spice_missing(corenlp_dir)):
        return SpiceJava(corenlp_dir)
    return SpiceApprox()


def caption_scorers(choice: BackendChoice = BackendChoice()) -> list[CaptionScorer]:
    """BLEU-1..4, ROUGE-L and CIDEr-D, then the chosen METEOR and SPICE backends (those that run)."""
    extra = [meteor_scorer(choice.meteor), spice_scorer(choice.spice, choice.corenlp_dir)]
    return [*BUILTIN_SCORERS, *(scorer for scorer in extra if scorer is not None)]
