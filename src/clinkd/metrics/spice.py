"""SPICE backends: the real SPICE 1.0 (Java) when its CoreNLP jars are supplied, else ``SPICE-approx``.

**``SPICE``** (:class:`SpiceJava`, backend ``spice-1.0 (java, Stanford CoreNLP 3.6.0)``) runs
pycocoevalcap 1.2's ``spice-1.0.jar`` as ``pycocoevalcap.spice.Spice`` does (``-subset -silent``, one
JSON file per corpus, the score is the mean over captions of the ``All`` F-score). It needs:

* ``stanford-corenlp-3.6.0.jar`` and ``stanford-corenlp-3.6.0-models.jar`` (from
  ``stanford-corenlp-full-2015-12-09.zip``), which nothing on PyPI or Debian ships, in a folder given by
  ``evaluate.corenlp_dir`` / ``--spice-jars`` / ``$CLINKD_CORENLP_DIR``, or in pycocoevalcap's
  ``spice/lib`` where pycocoevalcap would download them;
* Java, and on Java ≥ 15 (no built-in JavaScript engine, which SPICE uses to write its output) a JSR-223
  JavaScript engine jar: Debian's ``librhino-java`` (``/usr/share/java/rhino.jar``).

:func:`spice_missing` lists exactly what is absent; ``clinkd env`` prints it.

**``SPICE-approx``** (:class:`SpiceApprox`) is a clearly labelled stand-in, reported under its own
metric name and never as ``SPICE``. It follows SPICE's scoring and replaces its parser:

1. Tokens (the PTB-tokenised, lower-cased caption) are tagged from closed word lists (determiners,
   prepositions, conjunctions, copulas, frequent verbs and adverbs) and, for open words, WordNet's parts
   of speech (noun, adjective) with suffix rules as fallback and for words WordNet lacks.
2. A noun phrase is a run of modifiers (adjectives, numbers, nouns) closed by its last noun, the head.
   Objects are the heads; attributes are ``(head, modifier)`` pairs and ``(subject, adjective)`` after a
   copula ("the liver appears large and dark"); relations are ``(head, preposition, head)`` with the
   preposition attached to the nearest preceding head, and ``(subject, verb, object)`` for a verb
   between two phrases. Coordinated phrases ("the kidney and stomach") share the relation.
   Words are lemmatised (WordNet ``morphy``, else a plural rule).
3. Tuple sets: the candidate's, and the union over its references (SPICE merges reference graphs).
4. A candidate tuple matches a reference tuple of the same length when each element is the same lemma
   or shares a WordNet synset (SPICE's synonym rule); ``tp`` counts matched candidate tuples,
   ``P = tp/|C|``, ``R = tp/|R|``, ``F = 2PR/(P+R)`` (0 when either is 0), and the corpus score is the
   mean F, as in pycocoevalcap.

Known differences from SPICE 1.0: no dependency parse (attachment is "nearest head", so long-range
and clause structure can differ), no coreference or plural/quantity handling (SPICE adds counts as
attributes), compound nouns become attributes of their head rather than one object, SPICE's own lemma
list and synonym sets differ in details, and the numbers are therefore not comparable with published
SPICE values. Without WordNet, matching is exact-lemma only and the backend name says so.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clinkd.metrics.captions import check_corpus
from clinkd.metrics.meteor import BackendUnavailable, java_executable, java_version, pycocoevalcap_dir

SPICE_JAVA_BACKEND = "spice-1.0 (java, Stanford CoreNLP 3.6.0)"
SPICE_APPROX_METRIC = "SPICE-approx"
SPICE_JAR = "spice-1.0.jar"
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
CORENLP_ZIP = "stanford-corenlp-full-2015-12-09.zip (nlp.stanford.edu/software/)"
CORENLP_ENV = "CLINKD_CORENLP_DIR"
RHINO_JARS = (Path("/usr/share/java/rhino.jar"), Path("/usr/share/java/js.jar"))
RHINO_INSTALL = "apt-get install -y --no-install-recommends librhino-java"
SPICE_HEAP = "8G"  # pycocoevalcap's


# ---- the real SPICE -----------------------------------------------------------------------------
def spice_dir() -> Path | None:
    folder = pycocoevalcap_dir("spice")
    return folder if folder and (folder / SPICE_JAR).is_file() else None


def corenlp_dirs(configured: Path | str | None = None) -> list[Path]:
    """Where the CoreNLP 3.6.0 jars are looked for, in order: the configured folder,
    ``$CLINKD_CORENLP_DIR``, pycocoevalcap's ``spice/lib``."""
    folders = [Path(configured).expanduser()] if configured else []
    if os.environ.get(CORENLP_ENV):
        folders.append(Path(os.environ[CORENLP_ENV]).expanduser())
    if spice_dir() is not None:
        folders.append(spice_dir() / "lib")
    return folders


def find_corenlp(configured: Path | str | None = None) -> tuple[Path, Path] | None:
    """The two CoreNLP 3.6.0 jars from the first folder of :func:`corenlp_dirs` that has both."""
    for folder in corenlp_dirs(configured):
        jars = tuple(folder / name for name in CORENLP_JARS)
        if all(jar.is_file() for jar in jars):
            return jars
    return None


def java_major(version_line: str | None) -> int | None:
    """17 for ``openjdk version "17.0.15"``, 8 for ``java version "1.8.0_292"``."""
    match = re.search(r'"(\d+)(?:\.(\d+))?', version_line or "")
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_javascript_engine() -> Path | None:
    return next((jar for jar in RHINO_JARS if jar.is_file()), None)


def spice_missing(corenlp_dir: Path | str | None = None) -> list[str]:
    """Everything the real SPICE lacks here, each with how to get it (empty when it can run)."""
    missing = []
    java = java_executable()
    if java is None:
        missing.append("Java: apt-get install -y --no-install-recommends default-jre-headless")
    if spice_dir() is None:
        missing.append(f"pycocoevalcap's {SPICE_JAR}: pip install 'pycocoevalcap>=1.2'")
    if find_corenlp(corenlp_dir) is None:
        places = ", ".join(str(folder) for folder in corenlp_dirs(corenlp_dir)) or "(no folder configured)"
        missing.append(
            f"{' and '.join(CORENLP_JARS)} (from {CORENLP_ZIP}) in one of: {places}; "
            f"or point evaluate.corenlp_dir / --spice-jars / ${CORENLP_ENV} at their folder"
        )
    major = java_major(java_version(java)) if java else None
    if major is not None and major >= 15 and find_javascript_engine() is None:
        missing.append(
            f"a JavaScript engine for SPICE's output writer on Java {major} (removed in Java 15): "
            f"{RHINO_INSTALL} (provides {RHINO_JARS[0]})"
        )
    return missing


class SpiceJava:
    """SPICE 1.0 through pycocoevalcap's jar (module docstring); one JVM per corpus, as pycocoevalcap."""

    metrics = ("SPICE",)
    backend = SPICE_JAVA_BACKEND

    def __init__(self, corenlp_dir: Path | str | None = None, java: str | None = None, heap: str = SPICE_HEAP):
        missing = spice_missing(corenlp_dir) if java is None else []
        if missing:
            raise BackendUnavailable("real SPICE needs " + "; ".join(missing))
        self.java = java or java_executable()
        self.folder = spice_dir()
        self.corenlp = find_corenlp(corenlp_dir) or ()
        self.javascript = find_javascript_engine()
        self.heap = heap

    def command(self, input_path: Path, output_path: Path) -> list[str]:
        """The SPICE call: pycocoevalcap's arguments, with the CoreNLP and JavaScript jars on the class path
        (the jar's manifest still supplies its bundled ``lib/`` jars)."""
        classpath = [self.folder / SPICE_JAR, *self.corenlp, *([self.javascript] if self.javascript else [])]
        return [
            self.java, f"-Xmx{self.heap}", "-cp", os.pathsep.join(map(str, classpath)), "edu.anu.spice.SpiceScorer",
            str(input_path), "-out", str(output_path), "-subset", "-silent",
        ]  # fmt: skip

    def score(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
        check_corpus(candidates, references)
        if not candidates:
            return {"SPICE": 0.0}
        with tempfile.TemporaryDirectory(prefix="clinkd-spice-") as folder:
            input_path, output_path = Path(folder) / "input.json", Path(folder) / "output.json"
            pairs = enumerate(zip(candidates, references))
            rows = [{"image_id": i, "test": c, "refs": list(refs)} for i, (c, refs) in pairs]
            input_path.write_text(json.dumps(rows))
            result = subprocess.run(
                self.command(input_path, output_path), cwd=self.folder, capture_output=True, text=True
            )
            if result.returncode != 0 or not output_path.is_file():
                raise RuntimeError(
                    f"{SPICE_JAVA_BACKEND} failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}"
                )
            items = json.loads(output_path.read_text())
        return {"SPICE": spice_mean(items)}


def spice_mean(items: Iterable[dict]) -> float:
    """pycocoevalcap's SPICE: the mean of every caption's ``All`` F-score (a missing value is NaN)."""
    return float(np.mean(np.array([_float_or_nan(item["scores"]["All"]["f"]) for item in items])))


def _float_or_nan(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


# ---- SPICE-approx: tagging ----------------------------------------------------------------------
DETERMINERS = frozenset(
    "a an the this that these those some any no each every all both either neither another other its their "
    "his her our your my such".split()
)
PREPOSITIONS = frozenset(
    "in on at of with without within near above below under over behind beside besides between into onto "
    "from to along across around through inside outside beneath underneath towards toward via by for among "
    "against beyond throughout upon adjacent alongside".split()
)
CONJUNCTIONS = frozenset("and or but nor".split())
COPULAS = frozenset(
    "is are was were be been being appears appear appeared seems seem seemed looks look remains".split()
)
VERBS = frozenset(
    "show shows showing shown demonstrate demonstrates demonstrating reveal reveals revealing indicate indicates "
    "indicating contain contains containing has have having suggest suggests suggesting involve involves "
    "involving surround surrounds surrounding cover covers covering compress compresses compressing "
    "occupy occupies occupying extend extends extending display displays displaying depict depicts depicting "
    "see seen located noted visible present identified observed".split()
)
ADVERBS = frozenset("very slightly mildly markedly moderately also not there possibly likely probably relatively "
                    "partially well highly".split())  # fmt: skip
PRONOUNS = frozenset("it they which who whom whose what where when this".split())
# Descriptors read as adjectives whatever WordNet says ("left", "round" and "small" are nouns too).
DESCRIPTORS = frozenset(
    "small large big tiny huge bright dark round oval irregular left right upper lower top bottom central middle "
    "anterior posterior medial lateral superior inferior proximal distal normal abnormal mild moderate severe "
    "multiple single focal diffuse hyperechoic hypoechoic hyperdense hypodense solid cystic".split()
)
ADJECTIVE_SUFFIXES = ("ous", "al", "ic", "ive", "ar", "ent", "ant", "ful", "less", "able", "ible", "ed", "ish", "ary")


@dataclass(frozen=True)
class WordNetLexicon:
    """Parts of speech, lemmas and synonym sets from WordNet (NLTK's reader), cached per word."""

    reader: object
    _cache: dict = field(default_factory=dict, compare=False)

    def parts(self, word: str) -> frozenset[str]:
        key = ("pos", word)
        if key not in self._cache:
            self._cache[key] = frozenset(s.pos().replace("s", "a") for s in self.reader.synsets(word))
        return self._cache[key]

    def lemma(self, word: str, pos: str) -> str:
        key = ("lemma", word, pos)
        if key not in self._cache:
            self._cache[key] = self.reader.morphy(word, pos) or word
        return self._cache[key]

    def synsets(self, word: str) -> frozenset[str]:
        key = ("syn", word)
        if key not in self._cache:
            self._cache[key] = frozenset(s.name() for s in self.reader.synsets(word))
        return self._cache[key]


def load_wordnet_lexicon() -> WordNetLexicon | None:
    """WordNet through NLTK (:func:`clinkd.metrics.meteor.wordnet_reader`), or None where nltk or the data is
    missing."""
    from clinkd.metrics.meteor import wordnet_reader

    try:
        return WordNetLexicon(wordnet_reader())
    except BackendUnavailable:
        return None


def tag(tokens: Sequence[str], lexicon: WordNetLexicon | None) -> list[str]:
    """One tag per token: DET PREP CONJ COP VERB ADV PRON NUM ADJ NOUN, or NOUN|ADJ where both readings
    exist (the phrase rules decide)."""
    tags: list[str] = []
    for token in tokens:
        if token in DETERMINERS:
            kind = "DET"
        elif token in PREPOSITIONS:
            kind = "PREP"
        elif token in CONJUNCTIONS:
            kind = "CONJ"
        elif token in COPULAS:
            kind = "COP"
        elif token in VERBS:
            kind = "VERB"
        elif token in ADVERBS or (token.endswith("ly") and len(token) > 4):
            kind = "ADV"
        elif token in PRONOUNS:
            kind = "PRON"
        elif token in DESCRIPTORS:
            kind = "ADJ"
        elif re.fullmatch(r"[+-]?[\d.,/]+%?", token):
            kind = "NUM"
        else:
            kind = _open_class(token, lexicon, tags[-1] if tags else None)
        tags.append(kind)
    return tags


def _open_class(word: str, lexicon: WordNetLexicon | None, previous: str | None) -> str:
    if "-" in word and word.endswith(("ing", "ed")):  # "ring-enhancing", "well-defined": compound modifiers
        return "ADJ"
    parts = lexicon.parts(word) if lexicon else frozenset()
    if word.endswith("ing") and len(word) > 5 and (not parts or "v" in parts):
        # a participle ("causing") unless a determiner or modifier makes it a noun ("no abnormal finding")
        return "NOUN" if previous in ("DET", "ADJ", "NUM", "NOUN|ADJ") else "VERB"
    if parts:
        if "n" in parts:
            return "NOUN|ADJ" if "a" in parts else "NOUN"
        return "ADJ" if "a" in parts else ("VERB" if "v" in parts else "ADV")
    return "ADJ" if word.endswith(ADJECTIVE_SUFFIXES) else "NOUN"


# ---- SPICE-approx: scene graph ------------------------------------------------------------------
Tuple = tuple[str, ...]


@dataclass(frozen=True)
class _Phrase:
    head: str
    modifiers: tuple[str, ...]
    end: int  # index after the head


def scene_tuples(caption: str, lexicon: WordNetLexicon | None = None) -> set[Tuple]:
    """Object ``(o,)``, attribute ``(o, a)`` and relation ``(o, r, o')`` tuples of a tokenised caption."""
    tokens = caption.split()
    tags = tag(tokens, lexicon)
    tuples: set[Tuple] = set()
    nearest: list[str] = []  # heads of the latest (coordinated) noun phrases: prepositions attach here
    subject: list[str] = []  # heads of the clause's subject: verbs and copulas take these
    relation: tuple[str, list[str]] | None = None  # (name, sources) waiting for its object phrase
    described: list[str] = []  # subjects of a copula, taking predicate adjectives
    i = 0
    while i < len(tokens):
        phrase = None if described else _noun_phrase(tokens, tags, i, lexicon)
        if phrase is not None:
            tuples.add((phrase.head,))
            tuples.update((phrase.head, modifier) for modifier in phrase.modifiers)
            coordinated = _follows_conjunction(tags, i)
            if relation is not None:
                name, sources = relation
                tuples.update((source, name, phrase.head) for source in sources if source != phrase.head)
            elif not coordinated or not subject:
                subject = [phrase.head]
            else:
                subject = [*subject, phrase.head]
            nearest = [*nearest, phrase.head] if coordinated else [phrase.head]
            if not (phrase.end < len(tokens) and tags[phrase.end] == "CONJ"):
                relation = None  # kept over "and": "showing the kidney and stomach" shares the relation
            i = phrase.end
            continue
        kind, token = tags[i], tokens[i]
        if kind == "PREP" and nearest:
            relation, described = (token, nearest[-1:]), []
        elif kind == "VERB" and subject:
            relation, described = (_lemma(token, "v", lexicon), list(subject)), []
        elif kind == "COP" and subject:
            described, relation = list(subject), None
        elif kind == "PRON":
            subject = nearest[-1:]  # "…pneumothorax, which is…"
        elif kind in ("ADJ", "NOUN|ADJ") and described:
            tuples.update((head, _lemma(token, "a", lexicon)) for head in described)
        elif described and kind not in ("CONJ", "ADV", "DET"):
            described = []
            continue  # the predicate ended: re-read this token, maybe as the start of a phrase
        i += 1
    return tuples


def _follows_conjunction(tags: list[str], start: int) -> bool:
    j = start - 1
    while j >= 0 and tags[j] == "DET":
        j -= 1
    return j >= 0 and tags[j] == "CONJ"


def _noun_phrase(tokens: list[str], tags: list[str], start: int, lexicon: WordNetLexicon | None) -> _Phrase | None:
    """The noun phrase at ``start`` (determiners, then modifiers, then the head noun), or None."""
    i = start
    while i < len(tokens) and tags[i] == "DET":
        i += 1
    first = i
    while i < len(tokens) and tags[i] in ("ADJ", "NOUN", "NOUN|ADJ", "NUM", "ADV"):
        if tags[i] == "ADV" and not (i + 1 < len(tokens) and tags[i + 1] in ("ADJ", "NOUN|ADJ")):
            break  # an adverb belongs to a phrase only before an adjective ("very bright")
        i += 1
    # The head is the last noun-capable word; adjectives after it stay outside the phrase.
    heads = [k for k in range(first, i) if tags[k] in ("NOUN", "NOUN|ADJ")]
    if not heads:
        return None
    head = heads[-1]
    modifiers = tuple(
        _lemma(tokens[k], "n" if tags[k] == "NOUN" else "a", lexicon) for k in range(first, head) if tags[k] != "ADV"
    )
    return _Phrase(_lemma(tokens[head], "n", lexicon), modifiers, head + 1)


def _lemma(word: str, pos: str, lexicon: WordNetLexicon | None) -> str:
    if lexicon is not None:
        return lexicon.lemma(word, pos)
    if pos == "n" and len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


# ---- SPICE-approx: scoring ----------------------------------------------------------------------
def tuple_f_score(candidate: set[Tuple], reference: set[Tuple], lexicon: WordNetLexicon | None = None) -> float:
    """SPICE's ``All`` F-score: candidate tuples matched (same length, every element equal or WordNet
    synonyms) against the reference tuples; 0 when nothing matches or either side is empty."""
    matched = sum(c in reference or any(_tuples_match(c, r, lexicon) for r in reference) for c in candidate)
    if not candidate or not reference or matched == 0:
        return 0.0
    precision, recall = matched / len(candidate), matched / len(reference)
    return 2 * precision * recall / (precision + recall)


def _tuples_match(a: Tuple, b: Tuple, lexicon: WordNetLexicon | None) -> bool:
    return len(a) == len(b) and all(_words_match(x, y, lexicon) for x, y in zip(a, b))


def _words_match(a: str, b: str, lexicon: WordNetLexicon | None) -> bool:
    return a == b or (lexicon is not None and bool(lexicon.synsets(a) & lexicon.synsets(b)))


class SpiceApprox:
    """The labelled SPICE stand-in (module docstring), under the metric name ``SPICE-approx``."""

    metrics = (SPICE_APPROX_METRIC,)

    def __init__(self, lexicon: WordNetLexicon | None = None, use_wordnet: bool = True):
        self.lexicon = lexicon if lexicon is not None or not use_wordnet else load_wordnet_lexicon()
        synonyms = "WordNet synonyms" if self.lexicon is not None else "exact lemmas only, no WordNet"
        self.backend = f"spice-approx (clinkd rule-based scene graphs, {synonyms}; not SPICE 1.0)"

    def score(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
        check_corpus(candidates, references)
        if not candidates:
            return {SPICE_APPROX_METRIC: 0.0}
        parsed: dict[str, set[Tuple]] = {}

        def tuples(text: str) -> set[Tuple]:
            if text not in parsed:
                parsed[text] = scene_tuples(text, self.lexicon)
            return parsed[text]

        scores = [
            tuple_f_score(tuples(c), set().union(*(tuples(r) for r in refs)), self.lexicon)
            for c, refs in zip(candidates, references)
        ]
        return {SPICE_APPROX_METRIC: float(np.mean(np.array(scores)))}
