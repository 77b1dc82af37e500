"""Caption-metric pass: clinkd against pycocoevalcap 1.2, measured side by side in one run.

    python benchmarks/metrics.py                   # 30,000 predictions, BLEU/ROUGE-L/CIDEr (+ tokenisation)
    python benchmarks/metrics.py --meteor          # METEOR too: one JVM (ours) vs one per modality (COCOEvalCap)
    python benchmarks/metrics.py --n 3000          # a quick look

Predictions: ``--n`` rows, half RC and half MIA, spread over the 8 modalities. Annotations are answers of
the synthetic benchmark (:mod:`clinkd.synth`) with a random detail clause appended to most of them
(measurement, view, comparison), so most references are distinct; responses are the annotation edited at
the word level (drops, substitutions from the corpus vocabulary, swaps), another answer of the same
modality, empty, punctuation only, unicode, or very long, and end with ``<|im_end|>``. Duplicate rates
are printed: clinkd caches per distinct string, pycocoevalcap does not.

The reference side does what BiRD's ``eval_{GC,MII}_score_modality.py`` do, per task and modality:
pycocoevalcap's Java ``PTBTokenizer`` on the references and on the responses, then ``Bleu(4)``,
``Rouge()``, ``Cider()`` (and ``Meteor()``, a new JVM each time, as ``COCOEvalCap.evaluate`` does).
clinkd's side is one ``score_predictions`` call (clean-up, pure-Python tokenisation, per-modality scoring).
Both sides get the same cleaned responses.

Checks, printed before the timings:
* tokenisation: how many strings our ``ptb_tokenize`` writes exactly as the Java tokenizer does;
* bit-identical metrics: our BLEU-1..4, ROUGE-L and CIDEr-D on pycocoevalcap's own tokens, compared with
  ``==`` to pycocoevalcap's values for every (task, modality) corpus;
* end to end: the per-modality values of both whole passes, rounded to 6 decimals as BiRD does.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import resource
import time
from collections.abc import Callable

from clinkd.data.records import MODALITIES, Prediction
from clinkd.metrics.captions import BUILTIN_SCORERS, bleu, cached_corpus_table, cider_d, rouge_l
from clinkd.metrics.cleanup import clean_response
from clinkd.metrics.protocol import CAPTION_DECIMALS, score_predictions
from clinkd.metrics.tokenize import ptb_tokenize
from clinkd.synth.generate import draw, plan

TASKS = ("RC", "MIA")
METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr")
DETAILS = (
    ", measuring {n} mm",
    ", about {n} cm from the midline",
    " on the {ord} slice",
    ", seen on the {view} view",
    ", larger than on the prior study",
    ", unchanged since the scan {n} days ago",
    ", with {adj} margins",
)
ADJECTIVES = ("smooth", "lobulated", "ill-defined", "sharp", "spiculated", "blurred")
VIEWS = ("axial", "coronal", "sagittal", "oblique")
ODDITIES = ("...", "?!", "—", "Lésion hyperéchogène, 3½ cm — voir «annexe».", "Läsion (≈2 cm) naïve café")


def synthetic_predictions(n: int, seed: int, pool_per_cell: int = 10) -> list[Prediction]:
    """``n`` RC/MIA prediction rows (module docstring); deterministic for a seed."""
    rng = random.Random(seed)
    pool: dict[tuple[str, str], list[str]] = {}
    for job in plan(0, pool_per_cell):
        if job.task in TASKS:
            pool.setdefault((job.task, job.modality), []).append(draw(job, seed, 64)[1][0].answer)
    vocabulary = sorted({word for answers in pool.values() for answer in answers for word in answer.split()})
    rows = []
    for index in range(n):
        task = TASKS[index % 2]
        modality = MODALITIES[(index // 2) % len(MODALITIES)]
        answers = pool[task, modality]
        annotation = _with_detail(rng.choice(answers), rng)
        response = _response(annotation, answers, vocabulary, rng) + "<|im_end|>"
        record_id = f"{modality}_bench--{index:06d}"
        rows.append(Prediction(record_id, record_id + ".png", task, modality, "q", annotation, response))
    return rows


def _with_detail(answer: str, rng: random.Random) -> str:
    if rng.random() < 0.2:
        return answer
    detail = rng.choice(DETAILS).format(
        n=rng.randint(2, 90), ord=f"{rng.randint(2, 40)}th", view=rng.choice(VIEWS), adj=rng.choice(ADJECTIVES)
    )
    return answer.rstrip(".") + detail + "."


def _response(annotation: str, answers: list[str], vocabulary: list[str], rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.03:
        return ""
    if roll < 0.05:
        return rng.choice(ODDITIES)
    if roll < 0.07:
        return " ".join([annotation] * rng.randint(5, 12))  # very long
    if roll < 0.20:
        return _with_detail(rng.choice(answers), rng)  # a plausible but different answer
    words = []
    for word in annotation.split():
        edit = rng.random()
        if edit < 0.08:
            continue
        words.append(rng.choice(vocabulary) if edit < 0.16 else word)
    if len(words) > 2 and rng.random() < 0.3:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


CPU: dict[str, float] = {}  # step → CPU seconds (this process and its child JVMs), next to the wall times


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(function: Callable[[], object], step: str | None = None) -> tuple[object, float]:
    """(result, wall seconds); with ``step``, the CPU seconds are added to ``CPU[step]``."""
    started, cpu = time.perf_counter(), cpu_seconds()
    result = function()
    if step is not None:
        CPU[step] = CPU.get(step, 0.0) + cpu_seconds() - cpu
    return result, time.perf_counter() - started


def corpora(rows: list[Prediction]) -> dict[tuple[str, str], tuple[list[str], list[str]]]:
    """(task, modality) → (cleaned responses, annotations), in row order."""
    grouped: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    for row in rows:
        responses, truths = grouped.setdefault((row.task, row.modality), ([], []))
        responses.append(clean_response(row.response))
        truths.append(row.annotation)
    return grouped


def pycocoevalcap_pass(groups, with_meteor: bool) -> tuple[dict, dict, dict]:
    """BiRD's per-modality COCOEvalCap steps; returns (values, times, tokens) per (task, modality)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    values, tokens = {}, {}
    times = dict.fromkeys(["tokenize", "Bleu", "ROUGE_L", "CIDEr"] + (["METEOR"] if with_meteor else []), 0.0)
    for key, (responses, truths) in groups.items():
        references = {i: [{"caption": a}] for i, a in enumerate(truths)}
        gts, seconds = timed(lambda: PTBTokenizer().tokenize(references), "ref tokenize")
        times["tokenize"] += seconds
        res, seconds = timed(
            lambda: PTBTokenizer().tokenize({i: [{"caption": r}] for i, r in enumerate(responses)}), "ref tokenize"
        )
        times["tokenize"] += seconds
        tokens[key] = (gts, res)
        with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its counts
            (bleus, _), seconds = timed(lambda: Bleu(4).compute_score(gts, res), "ref Bleu")
        times["Bleu"] += seconds
        (rouge, _), times_rouge = timed(lambda: Rouge().compute_score(gts, res), "ref ROUGE_L")
        (cider, _), times_cider = timed(lambda: Cider().compute_score(gts, res), "ref CIDEr")
        times["ROUGE_L"] += times_rouge
        times["CIDEr"] += times_cider
        values[key] = dict(zip(METRICS, [*bleus, rouge, cider]))
        if with_meteor:
            from pycocoevalcap.meteor.meteor import Meteor

            def meteor():
                scorer = Meteor()  # COCOEvalCap.evaluate starts a JVM per call
                try:
                    return scorer.compute_score(gts, res)[0]
                finally:
                    del scorer

            values[key]["METEOR"], seconds = timed(meteor, "ref METEOR")
            times["METEOR"] += seconds
    return values, times, tokens


def clinkd_components(groups) -> dict[str, float]:
    """Our per-metric times on our own tokens (the breakdown of the whole pass)."""
    clear_caches()
    times = dict.fromkeys(["tokenize", "Bleu", "ROUGE_L", "CIDEr"], 0.0)
    for responses, truths in groups.values():
        (candidates, references), seconds = timed(
            lambda: ([ptb_tokenize(r) for r in responses], [[ptb_tokenize(a)] for a in truths]), "ours tokenize"
        )
        times["tokenize"] += seconds
        for name, function in (("Bleu", bleu), ("ROUGE_L", rouge_l), ("CIDEr", cider_d)):
            times[name] += timed(lambda: function(candidates, references), f"ours {name}")[1]
    return times


def clear_caches() -> None:
    """Forget tokenisations and n-gram tables, so no step reuses another's work."""
    ptb_tokenize.cache_clear()
    cached_corpus_table.cache_clear()


def identical_on_reference_tokens(values: dict, tokens: dict) -> dict[str, bool]:
    """Our scorers on pycocoevalcap's tokens, compared with ``==`` per metric over every corpus."""
    same = dict.fromkeys(METRICS, True)
    for key, (gts, res) in tokens.items():
        ids = sorted(gts)
        candidates = [res[i][0] for i in ids]
        references = [gts[i] for i in ids]
        ours = dict(
            zip(
                METRICS,
                [*bleu(candidates, references), rouge_l(candidates, references), cider_d(candidates, references)],
            )
        )
        for metric in METRICS:
            same[metric] &= ours[metric] == values[key][metric]
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=30_000, help="prediction rows (half RC, half MIA)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--meteor", action="store_true", help="METEOR 1.5 (Java) on both sides")
    args = parser.parse_args()

    rows, seconds = timed(lambda: synthetic_predictions(args.n, args.seed))
    groups = corpora(rows)
    responses = [r for group_responses, _ in groups.values() for r in group_responses]
    truths = [a for _, group_truths in groups.values() for a in group_truths]
    print(f"{len(rows)} predictions in {len(groups)} (task, modality) corpora, built in {seconds:.1f} s")
    print(f"distinct: {len(set(truths))}/{len(truths)} annotations, {len(set(responses))}/{len(responses)} responses")

    scorers = list(BUILTIN_SCORERS)
    if args.meteor:
        from clinkd.metrics.meteor import MeteorJava

        meteor = MeteorJava()
        scorers.append(meteor)
    clear_caches()

    def whole_pass() -> dict:
        metrics = score_predictions(rows, scorers=scorers)
        if args.meteor:
            meteor.close()  # the JVM exits inside the timing, so its CPU time is counted
        return metrics

    ours, ours_seconds = timed(whole_pass, "ours whole pass")
    reference, reference_times, reference_tokens = pycocoevalcap_pass(groups, args.meteor)
    components = clinkd_components(groups)

    java_tokens = [(res[i][0], gts[i][0]) for gts, res in reference_tokens.values() for i in sorted(gts)]
    ours_tokens = [(ptb_tokenize(r), ptb_tokenize(a)) for r, a in zip(responses, truths)]
    agree = sum(a == b for pair_a, pair_b in zip(ours_tokens, java_tokens) for a, b in zip(pair_a, pair_b))
    print(f"\ntokenisation: {agree}/{2 * len(ours_tokens)} strings identical to the Java PTBTokenizer")
    same = identical_on_reference_tokens(reference, reference_tokens)
    print(
        "bit-identical on pycocoevalcap's tokens: "
        + ", ".join(f"{m} {'yes' if ok else 'NO'}" for m, ok in same.items())
    )
    mismatched = [
        f"{task}/{modality} {metric}"
        for (task, modality), values in reference.items()
        for metric, value in values.items()
        if round(value, CAPTION_DECIMALS) != ours["tasks"][task]["per_modality"][modality][metric]
    ]
    print(f"end to end, 6 decimals: {'all equal' if not mismatched else 'DIFFERENT: ' + ', '.join(mismatched[:8])}")

    reference_total = sum(reference_times.values())
    reference_cpu = sum(value for key, value in CPU.items() if key.startswith("ref "))
    print("\nWall-clock seconds (CPU seconds incl. child JVMs in brackets):\n")
    print("| step | clinkd | pycocoevalcap | speed-up |\n|---|---:|---:|---:|")
    for step, theirs in reference_times.items():
        mine = components.get(step)
        theirs_text = f"{theirs:.2f} ({CPU[f'ref {step}']:.2f})"
        if mine is None:
            print(f"| {step} | – | {theirs_text} | – |")
        else:
            print(f"| {step} | {mine:.2f} ({CPU[f'ours {step}']:.2f}) | {theirs_text} | {theirs / mine:.1f}× |")
    ours_cpu = CPU["ours whole pass"]
    print(
        f"| **whole pass** | {ours_seconds:.2f} ({ours_cpu:.2f}) | {reference_total:.2f} ({reference_cpu:.2f}) | "
        f"**{reference_total / ours_seconds:.1f}×** ({reference_cpu / ours_cpu:.1f}× CPU) |"
    )
    print("\nclinkd's steps are timed again one by one on fresh caches; its whole pass is one score_predictions call.")
    if args.meteor:
        rest = reference_total - reference_times["METEOR"]
        print(
            f"Without METEOR on either side: pycocoevalcap {rest:.2f} s, clinkd components "
            f"{sum(components.values()):.2f} s."
        )


if __name__ == "__main__":
    main()
