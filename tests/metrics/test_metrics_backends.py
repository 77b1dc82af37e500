"""METEOR (jar and NLTK fallback), SPICE (real plumbing, doctor message, SPICE-approx), exact caption
metrics against pycocoevalcap on edge cases, figures, tables, compare and ``clinkd env``."""

import json
import math
import random
import shutil
import struct
import sys
from pathlib import Path

import pytest

from clinkd.data.records import MODALITIES, Prediction
from clinkd.metrics import meteor as meteor_module
from clinkd.metrics import spice as spice_module
from clinkd.metrics.backends import BackendChoice, caption_scorers
from clinkd.metrics.captions import BUILTIN_SCORERS, bleu, cider_d, lcs_length, ngram_counts, rouge_l
from clinkd.metrics.meteor import LEXNAMES, WORDNET_FILES, BackendUnavailable, MeteorNLTK, wordnet_dir
from clinkd.metrics.protocol import score_predictions
from clinkd.metrics.report import render_markdown
from clinkd.metrics.spice import (
    CORENLP_JARS,
    SpiceApprox,
    SpiceJava,
    java_major,
    scene_tuples,
    spice_mean,
    spice_missing,
    tuple_f_score,
)
from clinkd.metrics.tokenize import ptb_tokenize

from conftest import caption_corpus

HAS_JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not HAS_JAVA or meteor_module.meteor_jar() is None, reason="no Java or METEOR jar")


def _nltk_wordnet_ready() -> bool:
    try:
        import nltk  # noqa: F401  (only whether it imports)
    except ImportError:
        return False
    return not meteor_module.wordnet_missing() or (meteor_module.wordnet_cache_dir() / "lexnames").is_file()


needs_wordnet = pytest.mark.skipif(
    not _nltk_wordnet_ready(), reason="no nltk or Debian WordNet (wordnet-base, wordnet-sense-index)"
)


corpus = caption_corpus  # the shared seeded corpus (tests/conftest.py)


# pycocoevalcap 1.2's Meteor().compute_score on corpus(0, 60) and corpus(1, 25) (test_meteor_jar_equals_pycocoevalcap).
PYCOCOEVALCAP_METEOR = {(0, 60): 0.11785175735675223, (1, 25): 0.10473602102320086}


@pytest.fixture(scope="session")
def meteor_java():
    if not HAS_JAVA or meteor_module.meteor_jar() is None:
        pytest.skip("no Java or METEOR jar")
    scorer = meteor_module.MeteorJava()
    yield scorer
    scorer.close()


# ---- METEOR -------------------------------------------------------------------------------------
@needs_java
def test_one_jvm_gives_pycocoevalcaps_meteor_for_every_corpus(meteor_java):
    first = meteor_java.score(*corpus(0, 60))["METEOR"]
    process = meteor_java._process
    second = meteor_java.score(*corpus(1, 25))["METEOR"]
    again = meteor_java.score(*corpus(0, 60))["METEOR"]  # every pair cached: only the EVAL line goes to the jar
    assert (first, second) == (PYCOCOEVALCAP_METEOR[0, 60], PYCOCOEVALCAP_METEOR[1, 25])
    assert again == first and meteor_java._process is process  # the same JVM all along
    assert meteor_java.score([], []) == {"METEOR": 0.0}
    assert meteor_java.backend == "meteor-1.5 (java)"


@needs_java
@pytest.mark.slow
def test_meteor_jar_equals_pycocoevalcap(meteor_java):
    from pycocoevalcap.meteor.meteor import Meteor

    for seed, size in PYCOCOEVALCAP_METEOR:
        candidates, references = corpus(seed, size)
        expected, _ = Meteor().compute_score(dict(enumerate(references)), {i: [c] for i, c in enumerate(candidates)})
        assert meteor_java.score(candidates, references)["METEOR"] == expected == PYCOCOEVALCAP_METEOR[seed, size]


@needs_java
@pytest.mark.slow
def test_a_dead_jvm_is_replaced(meteor_java):
    meteor_java._running().kill()
    meteor_java._process.wait()
    assert meteor_java.score(["the new lesion"], [["a new lesion"]])["METEOR"] > 0  # a fresh JVM


def test_meteor_java_without_java_names_the_package(monkeypatch):
    from clinkd.metrics import backends

    monkeypatch.setattr(meteor_module, "java_executable", lambda: None)
    monkeypatch.setattr(
        backends, "_shared_meteor", None
    )  # a JVM an earlier test in this process started is not Java here
    with pytest.raises(BackendUnavailable, match="default-jre-headless"):
        meteor_module.MeteorJava()
    with pytest.raises(BackendUnavailable, match="default-jre-headless"):
        caption_scorers(BackendChoice(meteor="java", spice="off"))


@needs_wordnet
def test_the_nltk_fallback_runs_even_with_java_and_is_labelled():
    scorer = next(s for s in caption_scorers(BackendChoice(meteor="nltk", spice="off")) if "METEOR" in s.metrics)
    assert isinstance(scorer, MeteorNLTK)
    assert scorer.backend.startswith("meteor-nltk") and "not METEOR 1.5" in scorer.backend
    same = scorer.score(["a small round tumor in the liver"], [["a small round tumor in the liver"]])["METEOR"]
    synonym = scorer.score(["a small round neoplasm in the liver"], [["a small round tumor in the liver"]])["METEOR"]
    other = scorer.score(["a small round kidney in the liver"], [["a small round tumor in the liver"]])["METEOR"]
    assert 1 >= same == synonym > other > 0  # WordNet: tumor and neoplasm share a synset (full credit in NLTK)
    two = scorer.score(["a", "b"], [["a"], ["c"]])["METEOR"]
    assert two == pytest.approx((scorer.score(["a"], [["a"]])["METEOR"] + 0.0) / 2)  # the mean of caption scores


def test_wordnet_copy_for_nltk_gets_lexnames_and_real_files(tmp_path):
    source = tmp_path / "debian"
    source.mkdir()
    for name in WORDNET_FILES[:-1]:
        (source / name).write_text(name)
    with pytest.raises(BackendUnavailable, match="cntlist.rev.*wordnet-sense-index"):
        wordnet_dir(source, tmp_path / "data" / "corpora" / "wordnet")
    (source / "cntlist.rev").write_text("x")
    target = wordnet_dir(source, tmp_path / "data" / "corpora" / "wordnet")
    lines = (target / "lexnames").read_text().splitlines()
    assert len(lines) == 45 == len(LEXNAMES)
    assert lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1" and lines[44] == "44\tadj.ppl\t3"
    assert not (target / "data.noun").is_symlink() and (target / "data.noun").read_text() == "data.noun"


def test_backend_choices_are_checked():
    with pytest.raises(ValueError, match="meteor backend 'jar'"):
        BackendChoice(meteor="jar")
    with pytest.raises(ValueError, match="spice backend"):
        BackendChoice(spice="real")
    scorers = caption_scorers(BackendChoice(meteor="off", spice="off"))
    assert scorers == list(BUILTIN_SCORERS)


# ---- SPICE: the real one ------------------------------------------------------------------------
def test_spice_doctor_names_the_jars_and_the_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(spice_module.CORENLP_ENV, raising=False)
    missing = " ".join(spice_missing(tmp_path))
    assert all(jar in missing for jar in CORENLP_JARS) and str(tmp_path) in missing and "--spice-jars" in missing
    for jar in CORENLP_JARS:
        (tmp_path / jar).write_bytes(b"")
    assert not any("corenlp" in item for item in spice_missing(tmp_path))
    monkeypatch.setattr(spice_module, "java_executable", lambda: None)
    assert any("default-jre-headless" in item for item in spice_missing(tmp_path))


def test_clinkd_env_explains_real_spice(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from clinkd.cli import app

    monkeypatch.delenv(spice_module.CORENLP_ENV, raising=False)
    result = CliRunner().invoke(app, ["env", "--spice-jars", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for text in (
        "torch",
        "transformers",
        "java",
        "METEOR",
        "SPICE-approx",
        *CORENLP_JARS,
        "--spice-jars",
        str(tmp_path),
    ):
        assert text in result.output


def test_java_major_versions():
    assert java_major('openjdk version "17.0.15" 2025-04-15') == 17
    assert java_major('java version "1.8.0_292"') == 8
    assert java_major(None) is None


@pytest.mark.skipif(spice_module.spice_dir() is None, reason="pycocoevalcap's SPICE jar is not installed")
def test_real_spice_plumbing_with_a_stand_in_jvm(tmp_path):
    """The command and the result parsing, with a fake ``java`` writing SPICE's output format."""
    for jar in CORENLP_JARS:
        (tmp_path / jar).write_bytes(b"")
    fake = tmp_path / "java"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        "args = sys.argv[1:]\n"
        "rows = json.load(open(args[args.index('edu.anu.spice.SpiceScorer') + 1]))\n"
        "scores = [{'image_id': r['image_id'], 'scores': {'All': {'f': 1.0 if r['test'] == r['refs'][0] else 0.25}}} "
        "for r in rows]\n"
        "json.dump(scores, open(args[args.index('-out') + 1], 'w'))\n"
        "open(sys.argv[0] + '.args', 'w').write(json.dumps(args))\n"
    )
    fake.chmod(0o755)
    scorer = SpiceJava(tmp_path, java=str(fake))
    assert scorer.score(["a b", "c"], [["a b"], ["d"]]) == {"SPICE": 0.625}
    args = json.loads((tmp_path / "java.args").read_text())
    classpath = args[args.index("-cp") + 1]
    assert all(str(tmp_path / jar) in classpath for jar in CORENLP_JARS) and "spice-1.0.jar" in classpath
    assert args[-2:] == ["-subset", "-silent"] and args[0] == "-Xmx8G"
    assert scorer.backend == "spice-1.0 (java, Stanford CoreNLP 3.6.0)" and scorer.metrics == ("SPICE",)
    assert math.isnan(spice_mean([{"scores": {"All": {"f": "NaN"}}}, {"scores": {"All": {"f": 0.5}}}]))


# ---- SPICE-approx -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        (
            "a small round cyst in the left kidney",
            {
                ("cyst",),
                ("cyst", "small"),
                ("cyst", "round"),
                ("kidney",),
                ("kidney", "left"),
                ("cyst", "in", "kidney"),
            },
        ),
        ("the liver appears large and dark", {("liver",), ("liver", "large"), ("liver", "dark")}),
        (
            "mr image showing the ventricle and thalamus",
            {
                ("image",),
                ("image", "mr"),
                ("ventricle",),
                ("thalamus",),
                ("image", "showing", "ventricle"),
                ("image", "showing", "thalamus"),
            },
        ),
        ("", set()),
    ],
)
def test_scene_tuples_without_wordnet(caption, expected):
    assert scene_tuples(caption) == expected


def test_tuple_f_score_is_spices_all_f():
    reference = scene_tuples("a small round cyst in the left kidney")
    assert tuple_f_score(reference, reference) == 1.0
    candidate = scene_tuples("a large round cyst in the right kidney")  # 6 tuples, 4 shared of 6
    assert tuple_f_score(candidate, reference) == pytest.approx(4 / 6)
    assert tuple_f_score(set(), reference) == 0.0 and tuple_f_score(candidate, set()) == 0.0
    scorer = SpiceApprox(use_wordnet=False)
    assert scorer.metrics == ("SPICE-approx",) and "not SPICE 1.0" in scorer.backend and "no WordNet" in scorer.backend
    value = scorer.score(
        ["a large round cyst in the right kidney", ""], [["a small round cyst in the left kidney"], ["x"]]
    )
    assert value == {"SPICE-approx": pytest.approx((4 / 6 + 0) / 2)}


@needs_wordnet
def test_spice_approx_matches_wordnet_synonyms_and_lemmas():
    scorer = SpiceApprox()
    assert "WordNet synonyms" in scorer.backend
    lexicon = scorer.lexicon
    # neoplasm ~ tumor (a shared synset), lesions → lesion (morphy)
    assert tuple_f_score(scene_tuples("a neoplasm", lexicon), scene_tuples("a tumor", lexicon), lexicon) == 1.0
    assert scene_tuples("two lesions", lexicon) >= {("lesion",)}


def test_spice_approx_is_reported_under_its_own_name():
    rows = [
        Prediction(f"{m}_{i}", f"{m}_{i}.png", "RC", m, "q", "A small round cyst in the left kidney.", response, {})
        for i, (m, response) in enumerate([("ct", "A small cyst in the kidney."), ("mr", "A round cyst.")])
    ]
    metrics = score_predictions(rows, scorers=[*BUILTIN_SCORERS, SpiceApprox(use_wordnet=False)])
    rc = metrics["tasks"]["RC"]
    assert "SPICE-approx" in rc["metrics"] and "SPICE" not in rc["metrics"]
    assert metrics["backends"]["SPICE-approx"].startswith("spice-approx") and "SPICE" not in metrics["backends"]
    report = render_markdown(metrics, "approx")
    assert "| SPICE-approx | spice-approx (clinkd" in report and "| SPICE |" not in report


# ---- exact caption metrics ----------------------------------------------------------------------
EDGE_TEXTS = [
    "",
    "...",
    "?!",
    ", ; :",
    "—",
    "-- - --",
    "( )",
    "Lésion hyperéchogène, 3½ cm — voir «annexe».",
    "Läsion (≈2 cm) naïve café",
    "x² mm³ H₂O",
    "emoji 😀 ok",
    "It's the patient's 2.5mm/3mm T1-weighted lesion; e.g. U.S.",
    "Don't worry: it can't be.",
    "A\nmulti-line\ncaption",
    "<ref>liver</ref><box>(1,2),(3,4)</box>",
]


def caption_pairs(count: int = 240) -> list[tuple[str, str]]:
    """Fixed (candidate, reference) texts: synthetic answers, word-level edits, and the edge texts."""
    from clinkd.synth.generate import draw, plan

    rng = random.Random(7)
    answers = [draw(job, 3, 64)[1][0].answer for job in plan(0, 2) if job.task in ("RC", "MIA")]
    pairs = []
    for i in range(count):
        reference = answers[i % len(answers)]
        roll = i % 12
        if roll == 0:
            candidate = EDGE_TEXTS[(i // 12) % len(EDGE_TEXTS)]
        elif roll == 1:
            candidate = " ".join([reference] * 12)  # very long
        elif roll == 2:
            candidate, reference = reference, EDGE_TEXTS[(i // 12) % len(EDGE_TEXTS)]
        else:
            words = reference.split()
            candidate = " ".join(w if rng.random() > 0.2 else rng.choice(words) for w in words if rng.random() > 0.1)
        pairs.append((candidate, reference))
    return pairs


@pytest.mark.skipif(not HAS_JAVA, reason="no Java for pycocoevalcap's PTBTokenizer")
def test_caption_metrics_equal_pycocoevalcap_exactly_on_240_pairs_with_edge_cases():
    pytest.importorskip("pycocoevalcap")
    import contextlib
    import io

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    pairs = caption_pairs()
    texts = [text for pair in pairs for text in pair]
    java = PTBTokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
    assert [ptb_tokenize(t) for t in texts] == [java[i][0] for i in range(len(texts))]
    candidates = [ptb_tokenize(c) for c, _ in pairs]
    references = [[ptb_tokenize(r)] for _, r in pairs]
    gts, res = dict(enumerate(references)), {i: [c] for i, c in enumerate(candidates)}
    with contextlib.redirect_stdout(io.StringIO()):
        expected_bleu, _ = Bleu(4).compute_score(gts, res)
    assert bleu(candidates, references) == expected_bleu  # bit-identical, not approximately
    assert rouge_l(candidates, references) == Rouge().compute_score(gts, res)[0]
    assert cider_d(candidates, references) == Cider().compute_score(gts, res)[0]


def test_cider_bleu_rouge_bit_identical_on_multi_reference_corpora():
    pytest.importorskip("pycocoevalcap")
    import contextlib
    import io

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    for seed, size in ((11, 300), (12, 2), (13, 57)):
        candidates, references = corpus(seed, size)
        gts, res = dict(enumerate(references)), {i: [c] for i, c in enumerate(candidates)}
        with contextlib.redirect_stdout(io.StringIO()):
            assert bleu(candidates, references) == Bleu(4).compute_score(gts, res)[0]
        assert rouge_l(candidates, references) == Rouge().compute_score(gts, res)[0]
        assert cider_d(candidates, references) == Cider().compute_score(gts, res)[0]


def test_bit_parallel_lcs_equals_the_dynamic_programme():
    def dp(a, b):
        previous = [0] * (len(b) + 1)
        for x in a:
            current = [0]
            for j, y in enumerate(b, 1):
                current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[-1]))
            previous = current
        return previous[-1]

    rng = random.Random(3)
    for _ in range(500):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        assert lcs_length(a, b) == dp(a, b)


def test_ngram_table_groups_follow_pycocoevalcaps_insertion_order():
    from clinkd.metrics.ngram_tables import build_table

    texts = ["a b a b c", "", "c"]
    table = build_table(texts, 4)
    assert table.words.tolist() == [5, 0, 1]
    expected = ngram_counts(texts[0].split(), 4)  # pycocoevalcap's precook order
    for k, groups in enumerate(table.orders, start=1):
        first = slice(groups.start[0], groups.start[0] + groups.length[0])
        assert groups.count[first].tolist() == [c for g, c in expected.items() if len(g) == k]
    assert table.orders[0].length.tolist() == [3, 0, 1] and table.orders[3].length.tolist() == [2, 0, 0]
    # equal n-grams share an id across texts: "c" in text 0 and text 2
    unigrams = table.orders[0]
    assert unigrams.rank[unigrams.start[0] + 2] == unigrams.rank[unigrams.start[2]]


def test_sequential_sums_add_left_to_right_like_a_python_loop():
    import numpy as np

    from clinkd.metrics.ngram_tables import sequential_sums

    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 40, 300)
    values = rng.random(int(lengths.sum())) * 10.0 ** rng.integers(-3, 4, int(lengths.sum()))
    expected, start = [], 0
    for length in lengths:
        total = 0.0
        for value in values[start : start + length]:
            total += float(value)
        expected.append(total)
        start += length
    assert sequential_sums(values, lengths).tolist() == expected  # exactly, not approximately


# ---- figures, tables, compare, evaluate ---------------------------------------------------------
def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _rows(response_of):
    rows = []
    for i, modality in enumerate(MODALITIES[:5]):
        rows += [
            Prediction(
                f"{modality}_v{i}", "a.png", "VG", modality, "q", "<box>(0,0),(100,100)</box>", response_of("VG", i), {}
            ),
            Prediction(f"{modality}_r{i}", "a.png", "ROC", modality, "q", "left kidney", response_of("ROC", i), {}),
            Prediction(
                f"{modality}_c{i}", "a.png", "RC", modality, "q", "A small round cyst.", response_of("RC", i), {}
            ),
            Prediction(
                f"{modality}_m{i}", "a.png", "MIA", modality, "q", "CT image of the abdomen.", response_of("MIA", i), {}
            ),
        ]
    return rows


def good(task, i):
    return {
        "VG": "<box>(0,0),(100,90)</box>",
        "ROC": "the left kidney",
        "RC": "A small cyst.",
        "MIA": "CT image of the chest.",
    }[task]


def poor(task, i):
    return {
        "VG": "<box>(0,0),(10,10)</box>",
        "ROC": "liver" if i % 2 else "left kidney",
        "RC": "A cyst.",
        "MIA": "Abdomen.",
    }[task]


def test_figures_are_written(tmp_path):
    from clinkd.metrics.figures import loss_figure, modality_figure

    named = {"good": score_predictions(_rows(good)), "poor": score_predictions(_rows(poor))}
    path = modality_figure(named, tmp_path / "fig" / "modalities.png")
    assert path.stat().st_size > 15_000 and _png_size(path)[0] > 1000
    assert loss_figure(tmp_path, tmp_path / "loss.png") is None  # no training logs
    history = [
        {"loss": 3.0 - 0.1 * s, "kd": 0.5, "ce": 2.0, "grad_norm": 1.0, "learning_rate": 1e-3, "step": s}
        for s in range(1, 20)
    ]
    history += [{"eval_loss": 2.5, "step": 10}, {"train_runtime": 5.0, "train_loss": 2.2, "step": 19}]
    for stage in ("sft", "distill/student"):
        (tmp_path / stage).mkdir(parents=True)
        (tmp_path / stage / "train_log.json").write_text(json.dumps({"log_history": history}))
    path = loss_figure(tmp_path, tmp_path / "loss.png")
    assert path is not None and path.stat().st_size > 15_000


def test_run_evaluate_writes_tables_figures_and_names_backends(tmp_path):
    from clinkd.io import append_jsonl
    from clinkd.recipes.evaluate import run_evaluate

    append_jsonl(tmp_path / "pred.jsonl", [row.to_json() for row in _rows(good)])
    scorers = [*BUILTIN_SCORERS, SpiceApprox(use_wordnet=False)]
    run_evaluate([tmp_path / "pred.jsonl"], tmp_path / "out", scorers=scorers)
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert "![Scores per modality" in report and (out / "figures" / "modalities.png").stat().st_size > 10_000
    for backend in (scorer.backend for scorer in scorers):
        assert backend in report
    summary = (out / "tables" / "summary.csv").read_text().splitlines()
    assert summary[0] == "Model,VG (Recall@0.5),ROC (Recall),RC (SPICE-approx),MIA (mBR),Average"
    assert summary[1].startswith("model,62.5000,62.5000,")  # every row right, 5 of 8 modalities: Mean (8)
    per_modality = (out / "tables" / "per_modality.csv").read_text().splitlines()
    assert per_modality[1].startswith("VG,Recall@0.5,100.0000,") and ",,,," in per_modality[1]  # 3 empty modalities


def test_compare_renders_table_2_and_flags_backend_differences(tmp_path):
    from typer.testing import CliRunner

    from clinkd.cli import app
    from clinkd.io import atomic_write_json

    for name, response_of in (("bird", poor), ("clinkd", good)):
        atomic_write_json(tmp_path / name / "metrics.json", {"model": score_predictions(_rows(response_of))})
    result = CliRunner().invoke(
        app, ["compare", str(tmp_path / "bird"), str(tmp_path / "clinkd"), "--out", str(tmp_path / "cmp")]
    )
    assert result.exit_code == 0, result.output
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    clinkd_row = next(line for line in table.splitlines() if line.startswith("| clinkd |"))
    assert clinkd_row.count("↑") == 5  # four tasks and the average beat the reference row
    assert "Backends differ" not in table
    other = score_predictions(_rows(good), scorers=[*BUILTIN_SCORERS, SpiceApprox(use_wordnet=False)])
    other["backends"]["ROUGE_L"] = "another ROUGE"
    atomic_write_json(tmp_path / "x" / "metrics.json", {"model": other})
    result = CliRunner().invoke(
        app, ["compare", str(tmp_path / "bird"), str(tmp_path / "x"), "--label", "a", "--label", "b"]
    )
    assert "Backends differ" in result.output and "**ROUGE_L**" in result.output
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no metrics.json" in " ".join(result.output.split())


def test_evaluate_runs_without_nltk_and_says_once_that_meteor_is_missing(tmp_path, monkeypatch):
    """A plain install (no extras) scores RC and MIA: METEOR falls back to none, SPICE-approx to no WordNet."""
    import json
    import sys

    from typer.testing import CliRunner

    from clinkd.cli import app
    from clinkd.metrics import backends, meteor

    monkeypatch.setitem(sys.modules, "nltk", None)  # import nltk raises ImportError
    monkeypatch.setattr(backends, "meteor_java_missing", lambda: ["java"])
    monkeypatch.setattr(backends, "spice_missing", lambda corenlp_dir=None: ["CoreNLP jars"])
    meteor.wordnet_reader.cache_clear()
    row = {
        "id": "ct_1",
        "image": "ct_1.png",
        "modality": "ct",
        "question": "q",
        "annotation": "A small dark cyst.",
        "response": "A dark cyst.",
    }
    rows = tmp_path / "P.jsonl"
    rows.write_text("".join(json.dumps({**row, "task": task}) + "\n" for task in ("RC", "MIA")), encoding="utf-8")
    result = CliRunner().invoke(
        app, ["evaluate", "--pred", str(rows), "--out", str(tmp_path / "out"), "--no-figures", "--json"]
    )
    meteor.wordnet_reader.cache_clear()
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["model"]["tasks"]["MIA"]["headline"]["metric"] == "mBR"
    assert "no WordNet" in document["model"]["backends"]["SPICE-approx"]
    assert result.stderr.count("METEOR not run here") == 1 and "clinkd[nltk]" in result.stderr
