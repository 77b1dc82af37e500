"""The procedural Med-GRIT-style benchmark: 8 modalities, named structures and lesions, 4 tasks.

``generate(out_dir, seed, images, test_per_cell, image_size, progress)`` writes it (see
``docs/synth.md``); ``render_montage(dataset_dir, out_png)`` draws one example per modality.
"""

from clinkd.synth.generate import SynthSummary, generate
from clinkd.synth.montage import render_montage

__all__ = ["SynthSummary", "generate", "render_montage"]
