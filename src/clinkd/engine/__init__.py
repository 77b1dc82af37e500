"""The engines every stage runs on: generation (:mod:`.generate`), supervised fine-tuning (:mod:`.sft`) and
multi-process runs (:mod:`.distributed`). They know nothing of the stages above them."""
