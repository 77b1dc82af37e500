"""Interactive use: one-shot inference with drawn boxes (:mod:`.infer`, :mod:`.overlay`) and the web demo
(:mod:`.demo`, needs the ``demo`` extra). Importing this package does not import gradio."""
