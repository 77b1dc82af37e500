"""Reflective correction: score model outputs against the ground truth and correct the weak ones.

``similarity`` (lexical / embedding scores, box grounding), ``correctors`` (template / OpenAI-compatible,
and the acceptance check), ``tasks`` (the task of a training turn). The stage itself is
:func:`clinkd.recipes.reflect.run_reflect`; see ``docs/reflect.md``.
"""
