"""METEOR backends: the METEOR 1.5 jar in one long-lived JVM, or a clearly labelled NLTK fallback.

**``meteor-1.5 (java)``** (:class:`MeteorJava`) runs pycocoevalcap 1.2's bundled ``meteor-1.5.jar`` with
pycocoevalcap's exact command (``java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm``, in the jar's
folder) and speaks its stdin protocol as pycocoevalcap's ``Meteor.compute_score`` does:

* per caption ``SCORE ||| ref_1 ||| … ||| ref_k ||| hyp`` (``|||`` removed from the hypothesis and
  double spaces made single), answered by one line of sufficient statistics;
* per corpus ``EVAL ||| stats_1 ||| … ||| stats_N``, answered by ``N`` segment scores and then the
  corpus score, which is the reported METEOR.

So the numbers equal pycocoevalcap's. Unlike ``COCOEvalCap.evaluate``, which starts a JVM (~10 s: the
paraphrase table loads) for every call, i.e. every modality, one JVM serves the whole evaluation, the
``SCORE`` lines of a corpus are streamed without waiting for each answer, and the statistics of a
(hypothesis, references) pair already seen are reused (the jar's answer depends on that pair alone).

**``meteor-nltk``** (:class:`MeteorNLTK`), for machines without Java: NLTK's ``meteor_score`` with
WordNet 3.0 from Debian's ``wordnet-base`` and ``wordnet-sense-index`` packages (:func:`wordnet_dir`).
It is *not* METEOR 1.5: exact, Porter-stem and WordNet-synonym matching only, all of weight 1 (no
paraphrase table, no function-word weighting), with METEOR 1.5's ``en`` parameters (α = 0.85, β = 0.2,
γ = 0.6; NLTK's defaults, 0.9/3/0.5, nearly double the scores), and the corpus score is the mean of the
caption scores (METEOR 1.5 pools the statistics). On the synthetic benchmark it lands within about
0.01 of the jar per modality. Its backend name says so.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from clinkd.metrics.captions import check_corpus

METEOR_JAVA_BACKEND = "meteor-1.5 (java)"
METEOR_JAR = "meteor-1.5.jar"
METEOR_ARGUMENTS = ("-", "-", "-stdio", "-l", "en", "-norm")  # pycocoevalcap's, verbatim
METEOR_HEAP = "2G"
DEBIAN_WORDNET = Path("/usr/share/wordnet")
WORDNET_INSTALL = "apt-get install -y --no-install-recommends wordnet-base wordnet-sense-index"
# Files NLTK's WordNetCorpusReader opens; Debian ships all but lexnames (generated below).
WORDNET_FILES = tuple(
    [f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv")]
    + [f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")]
    + ["index.sense", "cntlist.rev"]
)
# WordNet 3.0's lexicographer files (lexnames(5WN)): number, name, syntactic category.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_LEXNAME_CATEGORY = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
METEOR_EN_PARAMETERS = {"alpha": 0.85, "beta": 0.2, "gamma": 0.6}  # METEOR 1.5's -l en (its δ has no NLTK counterpart)


class BackendUnavailable(RuntimeError):
    """A metric backend cannot run here; the message says what is missing and how to get it."""


# ---- locating the pieces ------------------------------------------------------------------------
def pycocoevalcap_dir(subpackage: str) -> Path | None:
    """``pycocoevalcap/<subpackage>`` of the installed package (a namespace package: no ``__file__``)."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / subpackage
        if folder.is_dir():
            return folder
    return None


def java_executable() -> str | None:
    return shutil.which("java")


@lru_cache(maxsize=4)
def java_version(java: str | None = None) -> str | None:
    """The first line of ``java -version`` (``openjdk version "17.0.15" …``), or None without Java."""
    java = java or java_executable()
    if java is None:
        return None
    result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[0] if lines else None


def meteor_jar() -> Path | None:
    folder = pycocoevalcap_dir("meteor")
    jar = folder / METEOR_JAR if folder else None
    return jar if jar and jar.is_file() else None


def meteor_java_missing() -> list[str]:
    """What :class:`MeteorJava` lacks here (empty when it can run)."""
    missing = []
    if java_executable() is None:
        missing.append("Java (apt-get install -y --no-install-recommends default-jre-headless)")
    if meteor_jar() is None:
        missing.append(f"pycocoevalcap's {METEOR_JAR} (pip install 'pycocoevalcap>=1.2')")
    return missing


# ---- METEOR 1.5 through one JVM -----------------------------------------------------------------
class MeteorJava:
    """METEOR 1.5 (module docstring); the JVM starts on the first :meth:`score` and lives until
    :meth:`close` (or garbage collection / interpreter exit)."""

    metrics = ("METEOR",)
    backend = METEOR_JAVA_BACKEND

    def __init__(self, java: str | None = None, jar: Path | None = None, heap: str = METEOR_HEAP):
        missing = [] if java and jar else meteor_java_missing()
        if missing:
            raise BackendUnavailable(f"{METEOR_JAVA_BACKEND} needs " + " and ".join(missing))
        self.java = java or java_executable()
        self.jar = Path(jar or meteor_jar())
        self.heap = heap
        self._process: subprocess.Popen | None = None
        self._stderr = None
        self._lock = threading.Lock()
        self._statistics: dict[tuple[str, tuple[str, ...]], str] = {}

    @property
    def command(self) -> list[str]:
        return [self.java, "-jar", f"-Xmx{self.heap}", self.jar.name, *METEOR_ARGUMENTS]

    def score(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
        """The jar's corpus METEOR of tokenised ``candidates`` against their ``references``."""
        check_corpus(candidates, references)
        if not candidates:
            return {"METEOR": 0.0}
        pairs = [(_hypothesis(c), tuple(_one_line(r) for r in refs)) for c, refs in zip(candidates, references)]
        with self._lock:
            new = [pair for pair in dict.fromkeys(pairs) if pair not in self._statistics]
            if new:
                lines = [" ||| ".join(("SCORE", " ||| ".join(refs), hypothesis)) for hypothesis, refs in new]
                answers = self._exchange(lines, len(lines))
                self._statistics.update(zip(new, answers))
            eval_line = "EVAL ||| " + " ||| ".join(self._statistics[pair] for pair in pairs)
            answers = self._exchange([eval_line], len(pairs) + 1)  # N segment scores, then the corpus score
        return {"METEOR": float(answers[-1])}

    def _exchange(self, lines: list[str], expected: int) -> list[str]:
        """Write ``lines`` (from a thread, so a full pipe cannot deadlock) and read ``expected`` answers."""
        process = self._running()
        payload = "".join(line + "\n" for line in lines).encode()

        def write() -> None:
            try:
                process.stdin.write(payload)
                process.stdin.flush()
            except OSError:  # the JVM died: the reader sees end of output and reports it with stderr
                pass

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        answers = []
        for _ in range(expected):
            line = process.stdout.readline()
            if not line:
                writer.join()
                raise RuntimeError(f"{METEOR_JAVA_BACKEND}: the JVM stopped ({self._stderr_tail()})")
            answers.append(line.decode().strip())
        writer.join()
        return answers

    def _running(self) -> subprocess.Popen:
        if self._process is None or self._process.poll() is not None:
            if self._stderr is not None:  # of a JVM that stopped
                self._stderr.close()
            self._stderr = tempfile.TemporaryFile()
            self._process = subprocess.Popen(
                self.command, cwd=self.jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
            )
        return self._process

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return "no output"
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        return f"exit code {self._process.poll()}; stderr: {text[-2000:] or 'empty'}"

    def close(self) -> None:
        """Stop the JVM (a later :meth:`score` starts a new one)."""
        with self._lock:
            process, self._process = self._process, None
            if process is not None and process.poll() is None:
                process.stdin.close()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None

    def __enter__(self) -> "MeteorJava":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        process = getattr(self, "_process", None)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


def _one_line(text: str) -> str:
    """The jar reads lines: a line break inside a caption would split it (tokenised text has none)."""
    return text.replace("\r", " ").replace("\n", " ")


def _hypothesis(text: str) -> str:
    return _one_line(text).replace("|||", "").replace("  ", " ")  # pycocoevalcap's clean-up, verbatim


# ---- the NLTK fallback --------------------------------------------------------------------------
def wordnet_cache_dir() -> Path:
    """Where the NLTK-readable WordNet copy goes: ``<cache>/nltk_data/corpora/wordnet`` with ``<cache>`` =
    ``$CLINKD_CACHE``, else ``$XDG_CACHE_HOME/clinkd``, else ``~/.cache/clinkd``."""
    base = os.environ.get("CLINKD_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clinkd"
    return Path(base) / "nltk_data" / "corpora" / "wordnet"


def wordnet_missing(source: Path = DEBIAN_WORDNET) -> list[str]:
    """The WordNet files absent from ``source`` (empty when a copy for NLTK can be made)."""
    return [name for name in WORDNET_FILES if not (source / name).is_file()]


def wordnet_dir(source: Path = DEBIAN_WORDNET, target: Path | None = None) -> Path:
    """A WordNet 3.0 folder NLTK can read, made from Debian's files on first use.

    NLTK needs the files *copied* into one folder (a symlink out of its root is refused) plus a
    ``lexnames`` file, which Debian does not ship and which is written from :data:`LEXNAMES`. The
    folder must be ``<nltk data root>/corpora/wordnet``: NLTK's reader looks the corpus up by that name.
    """
    target = target or wordnet_cache_dir()
    if all((target / name).is_file() for name in (*WORDNET_FILES, "lexnames")):
        return target
    missing = wordnet_missing(source)
    if missing:
        raise BackendUnavailable(
            f"meteor-nltk needs WordNet 3.0: {', '.join(missing)} missing from {source} ({WORDNET_INSTALL})"
        )
    staging = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=_made(target.parent)))
    for name in WORDNET_FILES:
        shutil.copyfile(source / name, staging / name)
    lines = [f"{number:02d}\t{name}\t{_LEXNAME_CATEGORY[name.split('.')[0]]}" for number, name in enumerate(LEXNAMES)]
    (staging / "lexnames").write_text("\n".join(lines) + "\n")
    if target.exists():  # an incomplete copy from an interrupted run
        shutil.rmtree(target)
    staging.rename(target)
    return target


def _nltk_wordnet() -> Path | None:
    """NLTK's own WordNet (``nltk.download('wordnet')``), when present and unzipped."""
    import nltk

    try:
        found = Path(str(nltk.data.find("corpora/wordnet")))
    except LookupError:
        return None
    return found if found.is_dir() else None


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@lru_cache(maxsize=4)
def wordnet_reader(wordnet: Path | None = None):
    """NLTK's WordNet reader over ``wordnet`` (an NLTK ``…/corpora/wordnet`` folder), by default NLTK's
    own data or else the Debian copy of :func:`wordnet_dir`; shared by METEOR and SPICE-approx.

    The folder's data root is added to ``nltk.data.path`` (NLTK opens files only under its data paths).
    """
    try:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError:
        raise BackendUnavailable("WordNet backends need nltk (pip install 'clinkd[nltk]')") from None

    class WordNet30(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            return None  # this *is* the "wordnet" corpus: skip NLTK's self-mapping (two index.sense reads)

    folder = Path(wordnet) if wordnet else _nltk_wordnet() or wordnet_dir()
    if folder.name != "wordnet" or folder.parent.name != "corpora":
        raise BackendUnavailable(f"{folder} is not an NLTK corpus folder (…/corpora/wordnet)")
    if str(folder.parents[1]) not in map(str, nltk.data.path):
        nltk.data.path.append(str(folder.parents[1]))
    with warnings.catch_warnings():  # "multilingual functions are not available": not used here
        warnings.simplefilter("ignore")
        return WordNet30(str(folder), None)


class MeteorNLTK:
    """The labelled METEOR approximation (module docstring); needs ``nltk`` and WordNet
    (:func:`wordnet_reader`)."""

    metrics = ("METEOR",)

    def __init__(self, wordnet: Path | None = None):
        self._wordnet = wordnet_reader(wordnet)  # first: BackendUnavailable, not ImportError, without nltk
        import nltk

        self.backend = (
            f"meteor-nltk (NLTK {nltk.__version__} meteor_score, METEOR 1.5 en parameters, WordNet "
            f"{self._wordnet.get_version()}; an approximation, not METEOR 1.5)"
        )

    def score(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
        """Mean over captions of NLTK's METEOR (tokens = the tokenised text split on spaces)."""
        from nltk.translate.meteor_score import meteor_score

        check_corpus(candidates, references)
        if not candidates:
            return {"METEOR": 0.0}
        scores = [
            meteor_score(
                [ref.split() for ref in refs], candidate.split(), wordnet=self._wordnet, **METEOR_EN_PARAMETERS
            )
            for candidate, refs in zip(candidates, references)
        ]
        return {"METEOR": sum(scores) / len(scores)}
