"""Generic grounding pre-training of the tiny base (``clinkd pretrain``, docs/pretrain.md).

``corpus`` draws the scenes and turns, ``dense`` trains the vision tower with per-token heads, ``heldout`` scores
grounding on a fixed set of scenes; the recipe that wires them is :mod:`clinkd.recipes.pretrain`.
"""
