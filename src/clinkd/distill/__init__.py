"""Pseudo-Augmented Medical Distillation components (the stage itself is ``clinkd.recipes.distill``).

See docs/distill.md.
"""

from clinkd.distill.batches import EXAMPLE_INDEX, IndexedCollator, IndexedExample, batch_position_ids, indexed
from clinkd.distill.pseudo import (
    PseudoChecks,
    PseudoLabel,
    StudentTargets,
    aligned_pseudo_labels,
    distillation_examples,
    generate_pseudo_labels,
    pseudo_problem,
    read_pseudo_labels,
    turn_samples,
)
from clinkd.distill.subset import PSEUDO_SEED_OFFSET, curriculum_order, seeded_subset
from clinkd.distill.teacher_cache import (
    CacheMismatchError,
    CacheSpec,
    TeacherCache,
    dataset_fingerprint,
    teacher_fingerprint,
    tokenizer_fingerprint,
    write_teacher_cache,
)
from clinkd.distill.trainer import KDTrainer, check_teacher_vocab, train_student

__all__ = [
    "EXAMPLE_INDEX",
    "PSEUDO_SEED_OFFSET",
    "CacheMismatchError",
    "CacheSpec",
    "IndexedCollator",
    "IndexedExample",
    "KDTrainer",
    "PseudoChecks",
    "PseudoLabel",
    "StudentTargets",
    "TeacherCache",
    "aligned_pseudo_labels",
    "batch_position_ids",
    "check_teacher_vocab",
    "curriculum_order",
    "dataset_fingerprint",
    "distillation_examples",
    "generate_pseudo_labels",
    "indexed",
    "pseudo_problem",
    "read_pseudo_labels",
    "seeded_subset",
    "teacher_fingerprint",
    "tokenizer_fingerprint",
    "train_student",
    "turn_samples",
    "write_teacher_cache",
]
