"""The BiRD/ClinKD scoring protocol: prediction rows → one JSON-serialisable metrics dict.

Every metric is computed inside each of the 8 modalities (:data:`clinkd.data.records.MODALITIES`)
and then averaged without weights (``docs/metrics.md`` has the rules):

* VG  ``Recall@0.5`` = hits/(GT boxes + 1e-8) per modality (:func:`clinkd.metrics.rules.score_grounding`);
* ROC ``Recall`` = correct/(samples + 1e-8) per modality (:func:`~clinkd.metrics.rules.classification_correct`);
* RC, MIA: every registered caption backend on each modality's corpus, rounded to 6 decimals as BiRD
  does, plus for MIA ``mBR`` = mean(B1..B4, ROUGE-L) and, with a METEOR backend, ``mBMR`` =
  mean(B1..B4, METEOR, ROUGE-L), both from the macro means (ClinKD's ``eval_MII.py``).

Schema of :func:`score_predictions`' result (values are fractions; CIDEr is on its 0–10 scale)::

    {"protocol": {"bird_exact": bool, "cleanup": str, "modalities": [8 keys], "macro": str,
                  "macro_present": str, "caption_decimals": 6},
     "backends": {metric or "tokenizer" or "cleanup": implementation},
     "tasks": {task: {                       # only the tasks present in the predictions
         "metrics": [metric, ...],           # display order
         "per_modality": {modality: {metric: value}},   # all 8; an empty modality has zeros
         "macro": {metric: value},           # mean over the 8 (empty → 0): the reported number
         "macro_present": {metric: value},   # mean over non-empty modalities (the paper's tables)
         "empty_modalities": [modality, ...],
         "headline": {"metric": str, "value": float} | None,
         "summary": [{"metric": str, "value": float}, ...],   # Table-1 columns, headline first
         "counts": {name: {modality: int, ..., "all": int}}}},
     "overall": {"value": float, "headlines": {task: metric}} | None}   # all 4 tasks only

Counts: ``samples`` and ``empty_responses`` (empty after clean-up) for every task; VG adds
``gt_boxes``, ``hits``, ``skipped_no_gt`` (no GT box: not scored), ``unparseable`` (GT present, no
box in the response) and ``malformed_boxes`` (box strings that are not four numbers); ROC adds
``correct``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from clinkd.data.records import MODALITIES, TASKS, Prediction, canonical_task
from clinkd.metrics.captions import CaptionScorer, metric_backends, registered_caption_scorers, score_captions
from clinkd.metrics.cleanup import clean_response
from clinkd.metrics.rules import classification_correct, ground_truth_corners, score_grounding
from clinkd.metrics.tokenize import PTB_TOKENIZER, CaptionTokenizer

VG_METRIC = "Recall@0.5"
ROC_METRIC = "Recall"
CAPTION_METRIC_ORDER = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE", "SPICE-approx")
COMPOSITES: dict[str, tuple[str, ...]] = {
    "mBR": ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L"),  # METEOR-free variant of mBMR
    "mBMR": ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L"),
}
COMPOSITE_TASKS = ("MIA",)
# Table-1 columns per task, in order; the first one present is the headline. RC's is SPICE, else the
# labelled SPICE-approx, else ROUGE-L: an F-measure on SPICE's 0-1 scale (CIDEr runs to 10).
SUMMARY_METRICS: dict[str, tuple[str, ...]] = {
    "VG": (VG_METRIC,),
    "ROC": (ROC_METRIC,),
    "RC": ("SPICE", "SPICE-approx", "ROUGE_L", "Bleu_4", "CIDEr"),
    "MIA": ("mBMR", "mBR"),
}
RATIO_EPSILON = 1e-8  # BiRD's denominator guard: an empty modality scores 0
CAPTION_DECIMALS = 6  # BiRD rounds each modality's caption metrics, and their means, to 6 decimals
PROTOCOL_NOTES = {
    "macro": "unweighted mean over the 8 modalities; a modality without data counts 0 (BiRD code)",
    "macro_present": "unweighted mean over the modalities with data (the paper's Tables 3/4)",
}

TaskGroups = dict[str, list[Prediction]]


def score_predictions(
    predictions: Iterable[Prediction],
    *,
    bird_exact: bool = False,
    scorers: Sequence[CaptionScorer] | None = None,
    tokenizer: CaptionTokenizer = PTB_TOKENIZER,
) -> dict:
    """Score prediction rows of any tasks (schema in the module docstring).

    ``bird_exact`` scores exactly as BiRD's scripts (no end-of-turn pre-step, ``<box>`` tags only);
    ``scorers`` defaults to the registered caption backends.
    """
    scorers = registered_caption_scorers() if scorers is None else list(scorers)
    grouped = group_predictions(predictions)
    tasks = {}
    for task in TASKS:
        if task not in grouped:
            continue
        groups = {modality: grouped[task].get(modality, []) for modality in MODALITIES}
        if task == "VG":
            tasks[task] = _score_grounding_task(groups, bird_exact)
        elif task == "ROC":
            tasks[task] = _score_classification_task(groups, bird_exact)
        else:
            tasks[task] = _score_caption_task(task, groups, bird_exact, scorers, tokenizer)
    return {
        "protocol": {
            "bird_exact": bird_exact,
            "cleanup": "extract_information (BiRD)"
            if bird_exact
            else "cut at end-of-turn token, then extract_information",
            "modalities": list(MODALITIES),
            **PROTOCOL_NOTES,
            "caption_decimals": CAPTION_DECIMALS,
        },
        "backends": _backends(bird_exact, scorers, tokenizer),
        "tasks": tasks,
        "overall": _overall(tasks),
    }


def group_predictions(predictions: Iterable[Prediction]) -> dict[str, dict[str, list[Prediction]]]:
    """task → modality → rows; raises ``ValueError`` naming the row for an unknown task or modality."""
    grouped: dict[str, dict[str, list[Prediction]]] = {}
    for prediction in predictions:
        where = f"prediction {prediction.id!r} (image {prediction.image!r})"
        try:
            task = canonical_task(prediction.task)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        if prediction.modality not in MODALITIES:
            raise ValueError(
                f"{where}: unknown modality {prediction.modality!r}; expected one of {', '.join(MODALITIES)}"
            )
        grouped.setdefault(task, {}).setdefault(prediction.modality, []).append(prediction)
    return grouped


def check_prediction(prediction: Prediction, bird_exact: bool = False) -> None:
    """``ValueError`` naming the row when it cannot be scored: an unknown task or modality, or a VG ground-truth box
    that does not parse (:func:`~clinkd.metrics.rules.ground_truth_corners`)."""
    if "VG" in group_predictions([prediction]):
        try:
            ground_truth_corners(prediction.annotation, bird_exact)
        except ValueError as error:
            raise ValueError(f"prediction {prediction.id!r}: {error}") from None


def _score_grounding_task(groups: TaskGroups, bird_exact: bool) -> dict:
    names = ("samples", "empty_responses", "gt_boxes", "hits", "skipped_no_gt", "unparseable", "malformed_boxes")
    counts = {name: dict.fromkeys(MODALITIES, 0) for name in names}
    per_modality = {}
    for modality, rows in groups.items():
        for row in rows:
            response = clean_response(row.response, bird_exact)
            try:
                outcome = score_grounding(row.annotation, response, bird_exact)
            except ValueError as error:
                raise ValueError(f"prediction {row.id!r}: {error}") from None
            counts["samples"][modality] += 1
            counts["empty_responses"][modality] += response == ""
            if outcome.gt_boxes == 0:  # BiRD skips the sample entirely
                counts["skipped_no_gt"][modality] += 1
                continue
            counts["gt_boxes"][modality] += outcome.gt_boxes
            counts["hits"][modality] += outcome.hits
            counts["unparseable"][modality] += outcome.predicted == 0
            counts["malformed_boxes"][modality] += outcome.malformed
        per_modality[modality] = {VG_METRIC: counts["hits"][modality] / (counts["gt_boxes"][modality] + RATIO_EPSILON)}
    empty = [modality for modality in MODALITIES if counts["gt_boxes"][modality] == 0]
    return _task_result("VG", [VG_METRIC], per_modality, counts, empty)


def _score_classification_task(groups: TaskGroups, bird_exact: bool) -> dict:
    counts = {name: dict.fromkeys(MODALITIES, 0) for name in ("samples", "empty_responses", "correct")}
    per_modality = {}
    for modality, rows in groups.items():
        for row in rows:
            response = clean_response(row.response, bird_exact)
            counts["samples"][modality] += 1
            counts["empty_responses"][modality] += response == ""
            counts["correct"][modality] += classification_correct(row.annotation, response)
        per_modality[modality] = {
            ROC_METRIC: counts["correct"][modality] / (counts["samples"][modality] + RATIO_EPSILON)
        }
    empty = [modality for modality in MODALITIES if counts["samples"][modality] == 0]
    return _task_result("ROC", [ROC_METRIC], per_modality, counts, empty)


def _score_caption_task(
    task: str, groups: TaskGroups, bird_exact: bool, scorers: Sequence[CaptionScorer], tokenizer: CaptionTokenizer
) -> dict:
    rows = [row for modality in MODALITIES for row in groups[modality]]
    responses = [clean_response(row.response, bird_exact) for row in rows]
    # One batch call per task: a Java tokenizer backend then starts once.
    candidates = tokenizer.tokenize_batch(responses)
    references = tokenizer.tokenize_batch([row.annotation for row in rows])
    metrics = sorted(metric_backends(scorers), key=_caption_metric_rank)
    counts = {name: dict.fromkeys(MODALITIES, 0) for name in ("samples", "empty_responses")}
    per_modality = {}
    start = 0
    for modality in MODALITIES:
        stop = start + len(groups[modality])
        counts["samples"][modality] = stop - start
        counts["empty_responses"][modality] = sum(response == "" for response in responses[start:stop])
        if stop == start:  # pycocoevalcap cannot score an empty corpus; BiRD's mean then counts it 0
            per_modality[modality] = dict.fromkeys(metrics, 0.0)
        else:
            values = score_captions(candidates[start:stop], [[ref] for ref in references[start:stop]], scorers)
            per_modality[modality] = {metric: round(values[metric], CAPTION_DECIMALS) for metric in metrics}
        start = stop
    empty = [modality for modality in MODALITIES if counts["samples"][modality] == 0]
    return _task_result(task, metrics, per_modality, counts, empty)


def _task_result(task: str, metrics: list[str], per_modality: dict, counts: dict, empty: list[str]) -> dict:
    present = [modality for modality in MODALITIES if modality not in empty]
    macro = {metric: _mean([per_modality[m][metric] for m in MODALITIES]) for metric in metrics}
    macro_present = {metric: _mean([per_modality[m][metric] for m in present]) for metric in metrics}
    if task in ("RC", "MIA"):
        macro = {metric: round(value, CAPTION_DECIMALS) for metric, value in macro.items()}
        macro_present = {metric: round(value, CAPTION_DECIMALS) for metric, value in macro_present.items()}
    if task in COMPOSITE_TASKS:
        for name, parts in COMPOSITES.items():
            if all(part in metrics for part in parts):
                metrics = [*metrics, name]
                for values in (*per_modality.values(), macro, macro_present):
                    values[name] = _mean([values[part] for part in parts])
    summary = [{"metric": metric, "value": macro[metric]} for metric in SUMMARY_METRICS[task] if metric in macro]
    for values in counts.values():
        values["all"] = sum(values.values())
    return {
        "metrics": metrics,
        "per_modality": per_modality,
        "macro": macro,
        "macro_present": macro_present,
        "empty_modalities": empty,
        "headline": summary[0] if summary else None,
        "summary": summary,
        "counts": counts,
    }


def _overall(tasks: dict) -> dict | None:
    """The paper's overall score: the mean of the four task headlines (only with all four)."""
    if any(task not in tasks or tasks[task]["headline"] is None for task in TASKS):
        return None
    headlines = {task: tasks[task]["headline"] for task in TASKS}
    return {
        "value": _mean([headline["value"] for headline in headlines.values()]),
        "headlines": {task: headline["metric"] for task, headline in headlines.items()},
    }


def _backends(bird_exact: bool, scorers: Sequence[CaptionScorer], tokenizer: CaptionTokenizer) -> dict[str, str]:
    regexes = "<box> tags" if bird_exact else "<box> and <|box_start|> tags"
    return {
        "cleanup": "clinkd.metrics.cleanup.clean_response" + (" (BiRD exact)" if bird_exact else ""),
        VG_METRIC: f"clinkd.metrics.rules (BiRD eval_VG_score_modality.py; {regexes}, bare integer-pair fallback)",
        ROC_METRIC: "clinkd.metrics.rules (BiRD eval_RO_score_modality.py)",
        "tokenizer": tokenizer.backend,
        **metric_backends(scorers),
        "mBR": "mean of the Bleu_1-4 and ROUGE_L macro means (mBMR without METEOR)",
        "mBMR": "mean of the Bleu_1-4, METEOR and ROUGE_L macro means (ClinKD eval_MII.py)",
    }


def _caption_metric_rank(metric: str) -> tuple[int, str]:
    order = CAPTION_METRIC_ORDER.index(metric) if metric in CAPTION_METRIC_ORDER else len(CAPTION_METRIC_ORDER)
    return order, metric


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0
