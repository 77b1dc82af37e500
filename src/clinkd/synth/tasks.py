"""Questions and answers for the four tasks, built from a :class:`~clinkd.synth.scene.Scene`.

Question templates are drawn uniformly and independently of the image, so the wording never predicts
the answer; every answer is read off the drawn objects (and, for ROC/RC, the box in the question).

* VG  — question names an object present in the image → ``<ref>name</ref><box>(x1,y1),(x2,y2)</box>``
* ROC — question carries an object's box → the class name
* RC  — question carries an object's box → one sentence of its size, shape, intensity and location
* MIA — whole image → the modality lead, the structures shown, and the lesion (or its absence)

Questions here carry no image tag: :func:`clinkd.data.medgrit.write_medgrit` puts
``Picture 1: <img>…</img>\\n`` before each record's first question, as Med-GRIT does.
"""

from __future__ import annotations

import numpy as np

from clinkd.boxes import BoxStyle, format_ref
from clinkd.data.records import Turn
from clinkd.synth.modalities import MODALITY_SPECS
from clinkd.synth.scene import Scene, SceneObject

TEMPLATES: dict[str, tuple[str, ...]] = {
    "VG": (
        "Where is the {ref} in this image?",
        "Please locate the {ref}.",
        "Find the {ref} and give its bounding box.",
        "Give the bounding box of the {ref}.",
        "Which region contains the {ref}?",
    ),
    "ROC": (
        "What is the object in {box}?",
        "What does the region {box} contain?",
        "Classify the object in {box}.",
        "What is shown in {box}?",
        "Name the object inside {box}.",
    ),
    "RC": (
        "Describe the region {box}.",
        "Give a short description of the object in {box}.",
        "What can you say about the area {box}?",
        "Please describe what is in {box}.",
        "Write a caption for the region {box}.",
    ),
    "MIA": (
        "What can you diagnose from the overall findings in this image?",
        "Describe the findings in this image.",
        "Please analyse this medical image.",
        "What does this image show?",
        "Summarise the findings of this image.",
    ),
}
NO_FINDING = "no abnormal finding"


def region_caption(obj: SceneObject) -> str:
    """RC answer: ``A small dark round cyst in the lower right region.`` for a lesion,
    ``The liver appears large, oval and bright in the upper left region.`` for a structure."""
    if obj.kind == "lesion":
        return f"A {obj.size} {obj.intensity} {obj.shape} {obj.name} in the {obj.location} region."
    return f"The {obj.name} appears {obj.size}, {obj.shape} and {obj.intensity} in the {obj.location} region."


def _listing(names: list[str]) -> str:
    """``the a``, ``the a and b``, ``the a, b and c``."""
    return "the " + (names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1])


def findings(scene: Scene) -> str:
    """MIA answer: ``<lead> showing the <structures>, with <a lesion in the X region | no abnormal finding>.``"""
    lead = MODALITY_SPECS[scene.modality].lead
    shown = _listing([obj.name for obj in scene.structures])
    lesion = scene.lesion
    if lesion is None:
        return f"{lead} showing {shown}, with {NO_FINDING}."
    return (
        f"{lead} showing {shown}, with a {lesion.size} {lesion.intensity} {lesion.shape} {lesion.name} "
        f"in the {lesion.location} region."
    )


def make_turn(task: str, scene: Scene, target: SceneObject, rng: np.random.Generator) -> Turn:
    """One QA turn of ``task`` about ``target`` (ignored by MIA, which is about the whole image)."""
    template = TEMPLATES[task][int(rng.integers(len(TEMPLATES[task])))]
    box = target.box.to_text(BoxStyle.QWEN_VL)
    if task == "VG":
        return Turn(template.format(ref=format_ref(target.name)), format_ref(target.name) + box)
    if task == "ROC":
        return Turn(template.format(box=box), target.name)
    if task == "RC":
        return Turn(template.format(box=box), region_caption(target))
    if task == "MIA":
        return Turn(template, findings(scene))
    raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TEMPLATES)}")


DEFAULT_TURNS: dict[str, int] = {task: 1 for task in TEMPLATES}


def train_turns(scene: Scene, rng: np.random.Generator, turns_per_task: dict[str, int] | None = None) -> list[Turn]:
    """``turns_per_task`` turns of each task (default one each) in a shuffled order.

    The referring tasks walk one shuffled cycle of the objects: each task starts where the previous
    one stopped, so VG, ROC and RC refer to different objects while they last, and the repeats of a
    task refer to different objects (a task asks at most one turn per object).
    """
    counts = DEFAULT_TURNS if turns_per_task is None else turns_per_task
    objects = len(scene.objects)
    capped = {task: counts.get(task, 0) if task == "MIA" else min(counts.get(task, 0), objects) for task in TEMPLATES}
    tasks = [task for task in TEMPLATES for _ in range(capped[task])]
    order = [tasks[i] for i in rng.permutation(len(tasks))]
    targets = [scene.objects[i] for i in rng.permutation(objects)]
    start: dict[str, int] = {}
    asked: dict[str, int] = {}
    turns = []
    referring = 0
    for task in order:
        first = start.setdefault(task, referring)
        repeat = asked.get(task, 0)
        asked[task] = repeat + 1
        turns.append(make_turn(task, scene, targets[(first + repeat) % objects], rng))
        referring += task != "MIA"
    return turns


def question_target(scene: Scene, rng: np.random.Generator) -> SceneObject:
    """The object a test record asks about: the lesion with probability ½ when there is one, else a
    uniformly drawn structure (so lesion and structure classes are about equally frequent in ROC)."""
    if scene.lesion is not None and rng.random() < 0.5:
        return scene.lesion
    return scene.structures[int(rng.integers(len(scene.structures)))]


def single_turn(task: str, scene: Scene, rng: np.random.Generator) -> Turn:
    """The single turn of a test record (VG, ROC and RC ask about :func:`question_target`)."""
    return make_turn(task, scene, question_target(scene, rng), rng)
