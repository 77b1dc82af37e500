"""``clinkd env``: library and Java versions, and which metric backends can run here and why not.

Nothing heavy is started: versions come from package metadata, Java from ``java -version``, and the
backends from file checks (no JVM, no WordNet load).
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

from clinkd.metrics.meteor import (
    DEBIAN_WORDNET,
    WORDNET_INSTALL,
    java_version,
    meteor_jar,
    meteor_java_missing,
    wordnet_cache_dir,
    wordnet_missing,
)
from clinkd.metrics.spice import CORENLP_JARS, corenlp_dirs, find_corenlp, spice_missing

PACKAGES = ("clinkd", "torch", "transformers", "accelerate", "numpy", "pycocoevalcap", "nltk", "matplotlib")


def device_description(device=None) -> str:
    """The device a run computes on: the CUDA card's name, else the CPU (its processor or architecture, and cores).
    ``device`` defaults to the first GPU when there is one."""
    import torch

    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment_report(corenlp_dir: Path | str | None = None) -> dict:
    """Versions, and per metric the backend ``auto`` picks plus what each other option lacks."""
    nltk_ready = package_version("nltk") is not None
    wordnet_gaps = [] if (wordnet_cache_dir() / "lexnames").is_file() else wordnet_missing()
    nltk_missing = ([] if nltk_ready else ["nltk (pip install 'clinkd[nltk]')"]) + (
        [f"WordNet files {', '.join(wordnet_gaps)} in {DEBIAN_WORDNET} ({WORDNET_INSTALL})"] if wordnet_gaps else []
    )
    java_gaps = meteor_java_missing()
    spice_gaps = spice_missing(corenlp_dir)
    meteor_auto = (
        "meteor-1.5 (java)"
        if not java_gaps
        else ("meteor-nltk" if not nltk_missing else "none (METEOR and mBMR not reported)")
    )
    return {
        "python": platform.python_version(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "java": java_version(),
        "backends": {
            "BLEU-1..4, ROUGE-L, CIDEr-D": {"auto": "clinkd pure Python (pycocoevalcap 1.2 semantics)", "missing": {}},
            "METEOR": {
                "auto": meteor_auto,
                "missing": {"java": java_gaps, "nltk": nltk_missing},
                "jar": str(meteor_jar()) if meteor_jar() else None,
            },
            "SPICE": {
                "auto": "SPICE (spice-1.0, java)"
                if not spice_gaps
                else "SPICE-approx (reported as SPICE-approx, never as SPICE)",
                "missing": {"official": spice_gaps, "approx": []},
                "notes": [f"SPICE-approx matches exact lemmas only without WordNet: {'; '.join(nltk_missing)}"]
                if nltk_missing
                else [],
                "corenlp_jars": [str(jar) for jar in find_corenlp(corenlp_dir) or ()],
                "corenlp_search": [str(folder) for folder in corenlp_dirs(corenlp_dir)],
            },
        },
    }


def render_environment(report: dict) -> str:
    """The report as plain text, one fact per line, with the exact fix for every missing piece."""
    lines = [f"python {report['python']}"]
    lines += [f"{name} {version or 'not installed'}" for name, version in report["packages"].items()]
    lines.append(
        f"java: {report['java'] or 'not found (apt-get install -y --no-install-recommends default-jre-headless)'}"
    )
    lines.append("")
    lines.append("metric backends (evaluate.meteor / evaluate.spice = auto picks):")
    for metric, info in report["backends"].items():
        lines.append(f"  {metric}: {info['auto']}")
        for option, missing in info["missing"].items():
            if missing:
                lines.append(f"    {option} unavailable, missing:")
                lines += [f"      - {item}" for item in missing]
            else:
                lines.append(f"    {option}: ready")
        lines += [f"    note: {note}" for note in info.get("notes", [])]
    spice = report["backends"]["SPICE"]
    if spice["missing"]["official"]:
        lines.append("")
        lines.append(
            "Real SPICE 1.0 needs the Stanford CoreNLP 3.6.0 jars, which no package index ships: put "
            f"{' and '.join(CORENLP_JARS)} in a folder and pass it as --spice-jars DIR (or evaluate.corenlp_dir, "
            "or $CLINKD_CORENLP_DIR). Searched: " + (", ".join(spice["corenlp_search"]) or "nothing configured") + "."
        )
    return "\n".join(lines)
