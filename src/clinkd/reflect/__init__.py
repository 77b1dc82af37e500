"""Reflective correction: score model outputs against the ground truth and correct the weak ones.

``items`` (the training turns worked on, and their seeded draws), ``similarity`` (lexical / embedding scores,
box grounding), ``scoring`` (scored rows, weak selection, summaries), ``correctors`` (template /
OpenAI-compatible, and the acceptance check), ``corrections`` (provenance rows, accepted examples), ``report``
(the report section), ``tasks`` (the task of a training turn). The stage itself, with its loop, is
:func:`clinkd.recipes.reflect.run_reflect`; see ``docs/reflect.md``.
"""
