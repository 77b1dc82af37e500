"""A pure-Python approximation of pycocoevalcap's caption tokenisation.

pycocoevalcap 1.2 runs Stanford CoreNLP 3.4.1's ``PTBTokenizer -preserveLines -lowerCase`` (Java) on
every caption, then drops the tokens in :data:`PUNCTUATIONS` and joins the rest with single spaces.
:func:`ptb_tokenize` reproduces that output without Java for ordinary English text:

* lower-case; ``\\n`` becomes a space (pycocoevalcap does this before the Java call);
* clitics split off: ``don't`` → ``do n't``, ``it's`` → ``it 's``, ``cannot`` → ``can not``,
  ``gonna`` → ``gon na``;
* ``, ; : ! ? " ' `` and dashes are split off (and then dropped); ``?!`` stays one (kept) token;
* a final ``.`` is split off and dropped, except after single letters, dotted acronyms (``e.g.``,
  ``u.s.a.``) and the abbreviations in :data:`ABBREVIATIONS` (``etc.``, ``dr.``, ``fig.``…);
* brackets become ``-lrb- -rrb- -lsb- -rsb- -lcb- -rcb-`` and are **kept**: pycocoevalcap's list has
  the upper-case ``-LRB-``, which ``-lowerCase`` output never matches;
* numbers keep inner ``.``/``,`` (``3.5``, ``1,000``) and a leading sign (``-5``); a decimal glued to
  letters is split (``2.5mm`` → ``2.5 mm``, while ``5mm`` stays, as CoreNLP does);
* words keep inner ``- / . & @`` (``t1-weighted``, ``mg/kg``) and an apostrophe after one leading letter
  (``o'clock``, ``d'alembert``; ``ab'cd`` splits); SGML tags (``<ref>``) are single tokens;
  ``% $ # = + * < > |`` are tokens of their own and kept;
* Unicode as CoreNLP 3.4.1: ``« » ‹ ›`` are quotes (dropped), ``½ ¼ ¾`` become ``1/2 1/4 3/4`` tokens,
  ``…`` is ``...``, ``€ £ ¢`` become ``$ # cents``, super/subscript digits (``x²``, ``H₂O``) are tokens of
  their own, ``‐``/``‑`` act as ``-``, combining accents stay in their word, and what CoreNLP cannot
  tokenise is deleted as a separator: characters outside the BMP (emoji), control and zero-width
  characters, roman-numeral signs, ``₹``; a soft hyphen vanishes.

Known differences from the Java lexer (rare in captions): ``y'all``, ``'tis``, ``rock'n'roll``, currency
prefixes (``US$5`` is ``us$ 5`` there: CoreNLP matches them before lower-casing), URLs and e-mail
addresses with punctuation, ``#tag`` vs ``#1`` subtleties, CoreNLP's context-dependent abbreviation list
(e.g. ``No. 5`` keeps ``no.`` there), and rarer untokenizable characters than those listed above.
Line separators other than ``\\n`` (``\\r``, U+2028, U+0085) break pycocoevalcap's own line alignment.

Results are cached per string (``functools.lru_cache``): captions repeat across rows and tasks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

# pycocoevalcap/tokenizer/ptbtokenizer.py, verbatim: tokens dropped after tokenisation.
PUNCTUATIONS: frozenset[str] = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# Words whose final period CoreNLP keeps attached (a subset of its lexer's list).
ABBREVIATIONS: frozenset[str] = frozenset(
    ["mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "fig", "figs", "inc", "ltd", "corp", "co"]
)

_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
# Characters CoreNLP normalises to their ASCII PTB forms, or deletes (untokenizable: a separator).
_NORMALISE_MAP = {
    "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2018": "`", "\u2026": " ... ", "\u2013": "--", "\u2014": "--",
    "\u00ab": '"', "\u00bb": '"', "\u2039": '"', "\u203a": '"',  # guillemets: quotes, dropped
    "\u00bd": " 1/2 ", "\u00bc": " 1/4 ", "\u00be": " 3/4 ",  # vulgar fractions are tokens of their own
    "\u20ac": "$", "\u00a3": "#", "\u00a2": " cents ",  # -normalizeCurrency
    "\u00ad": "",  # a soft hyphen vanishes inside its word
    "\n": " ",
}
_NORMALISE_MAP.update(dict.fromkeys(map(chr, [*range(0x00, 0x09), *range(0x0E, 0x20)]), " "))  # control characters
_NORMALISE_MAP.update(dict.fromkeys(["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u20b9"], " "))
_NORMALISE_MAP.update(dict.fromkeys(map(chr, range(0x2160, 0x2189)), " "))  # roman numeral signs: deleted
_NORMALISE = str.maketrans(_NORMALISE_MAP)
_OUTSIDE_BMP = re.compile("[\U00010000-\U0010ffff]")  # emoji, math alphanumerics: untokenizable in CoreNLP 3.4.1
_CLITIC_SPLITS = (
    (re.compile(r"\b(\w+)(n't)\b"), r"\1 \2"),
    (re.compile(r"(?<=\w)'(s|re|ve|ll|d|m)\b"), r" '\1"),
    (re.compile(r"\b(can)(not)\b"), r"\1 \2"),
    (re.compile(r"\b(gon|wan)(na)\b|\b(got)(ta)\b|\b(lem|gim)(me)\b"), lambda m: " ".join(g for g in m.groups() if g)),
)
_CLITIC_WORDS = re.compile(r"cannot|gonna|wanna|gotta|lemme|gimme")  # the clitic splits without an apostrophe
# A word character: \w less super/subscript digits (tokens of their own), plus combining accents.
_W = r"(?:[^\W\u00b2\u00b3\u00b9\u2070-\u209f]|[\u0300-\u036f])"
_TOKEN = re.compile(
    r"(?P<tag></?[a-z][\w:.-]*>)"  # SGML tag: <ref>, </box>
    r"|(?P<dashes>-{2,})"  # -- and longer dash runs
    r"|(?P<decimal>[+-]?\d+\.\d+(?=[^\W\d_])|[+-]?\.\d+)"  # 2.5 of 2.5mm; .5
    r"|(?P<clitic>n't\b|'(?:s|re|ve|ll|d|m)\b)"  # split off by _CLITIC_SPLITS
    # a word: optional sign (-5), #/@ before a letter, or one letter + apostrophe (o'clock, not ab'cd)
    rf"|(?P<word>(?:[+-](?=\d)|[#@](?=[^\W\d_])|[^\W\d_]'(?=[^\W\d_]{{2}}))?{_W}+"
    rf"(?:(?:[-/.&@\u2010\u2011]|(?<=\d),(?=\d)){_W}+)*)"
    r"|(?P<dots>\.{2,})"
    r"|(?P<marks>[?!]+)"
    r"|(?P<other>\S)"
)
_OTHER = {'"': "''", "\u2010": "-", "\u2011": "-"}  # a lone quote or Unicode hyphen: punctuation
_TRAILING_MARKS = frozenset(",;:?!.")  # split off a word as tokens in PUNCTUATIONS (a '.' maybe kept)
_ACRONYM = re.compile(r"(?:[^\W\d_]\.)*[^\W\d_]")  # u.s, e.g, a (a final '.' then stays attached)


@lru_cache(maxsize=1 << 16)
def ptb_tokenize(text: str) -> str:
    """The space-joined tokens pycocoevalcap would score for ``text`` (see the module docstring)."""
    text = text.lower().translate(_NORMALISE)
    if not text.isascii():
        text = _OUTSIDE_BMP.sub(" ", text)
    if "'" in text or _CLITIC_WORDS.search(text):  # most captions have no clitic: skip the four passes
        for pattern, replacement in _CLITIC_SPLITS:
            text = pattern.sub(replacement, text)
    tokens: list[str] = []
    for chunk in text.split():
        # Fast paths (most chunks): a plain word, or a word and one trailing mark, which is then dropped.
        if chunk.isalpha() or (chunk.isascii() and chunk.isalnum()):
            tokens.append(chunk)
        elif chunk[-1] in _TRAILING_MARKS and chunk[:-1].isalpha():
            if chunk[-1] == "." and _keeps_period(chunk[:-1]):
                tokens.append(chunk)
            else:
                tokens.append(chunk[:-1])
        else:
            tokens.extend(token for token in _chunk_tokens(chunk) if token not in PUNCTUATIONS)
    return " ".join(tokens)


def _chunk_tokens(chunk: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    while position < len(chunk):
        match = _TOKEN.match(chunk, position)
        kind, token = match.lastgroup, match.group()
        position = match.end()
        if kind == "dashes":
            token = "--"
        elif kind == "dots":
            token = "..."
        elif kind == "other":
            token = _BRACKETS.get(token, _OTHER.get(token, token))
        elif kind == "word" and chunk.startswith(".", position) and _keeps_period(token):
            token += "."
            position += 1
        tokens.append(token)
    return tokens


def _keeps_period(word: str) -> bool:
    """Whether a ``.`` right after ``word`` belongs to it (abbreviation, acronym or initial)."""
    return word in ABBREVIATIONS or _ACRONYM.fullmatch(word) is not None


@dataclass(frozen=True)
class CaptionTokenizer:
    """A tokenisation backend for the caption metrics: a batch call (a Java backend starts once)."""

    backend: str
    tokenize_batch: Callable[[Sequence[str]], list[str]]


def ptb_tokenize_batch(texts: Sequence[str]) -> list[str]:
    return [ptb_tokenize(text) for text in texts]


PTB_TOKENIZER = CaptionTokenizer(
    "clinkd ptb_tokenize (pure-Python approximation of pycocoevalcap's Java PTBTokenizer)", ptb_tokenize_batch
)
