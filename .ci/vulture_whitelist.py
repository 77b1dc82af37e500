"""What vulture (.ci/run's dead-code scan) cannot see being used: names that a framework calls or reads.

Never run, only read by vulture ([tool.vulture] in pyproject.toml); a name goes here only with the framework that
uses it.
"""

# ruff: noqa: F821
from clinkd import cli, config
from clinkd.distill.teacher_cache import CacheSpec
from clinkd.engine.served import ServedStats
from clinkd.engine.sft import TrainerFactory, UmaskCheckpoints
from clinkd.metrics.meteor import MeteorJava, wordnet_reader
from clinkd.model import rope
from clinkd.progress import RichProgressCallback
from clinkd.recipes.pretrain import HeldOutCurve, UnfreezeVision
from clinkd.testing import loopback

# typer registers the commands by decorator
cli.clip_train, cli.compare, cli.show_env, cli.demo, cli.show_config
# pydantic runs the validators and serializers by decorator
config.SynthConfig._valid_turn_mix, config.ModelConfig._base_is_shipped
config.ServedModelConfig._instruction_tasks, config.ServedModelConfig._complete_when_used
config.PredictConfig._known_tasks, config.PretrainConfig._known_tasks, config.SelectConfig._at_most_num_beams
config.DistillConfig._loss_keys_over_the_preset, config.DistillConfig._loss_keys_flat
# dataclass fields read through asdict (the cache manifest, the served run record)
CacheSpec.dataset_sha256, CacheSpec.tokenizer_sha256, CacheSpec.teacher_sha256
ServedStats.completion_tokens
# the protocol's keyword parameters, as run_sft passes them
TrainerFactory.__call__.data_collator
# transformers' TrainerCallback hooks and their arguments
UmaskCheckpoints.on_save, RichProgressCallback.on_train_begin, RichProgressCallback.on_step_end
RichProgressCallback.on_log, RichProgressCallback.on_train_end, UnfreezeVision.on_step_begin, HeldOutCurve.on_step_end
control  # every TrainerCallback hook's positional argument
# transformers reads these modules' attributes and overrides (rotary init, the MTP layer's published weights)
rope._PaperFrequencies.compute_default_rope_parameters, rope.MultiTokenPredictionWeights.fc
rope.MultiTokenPredictionWeights.pre_fc_norm_hidden, rope.MultiTokenPredictionWeights.pre_fc_norm_embedding
rotary_emb, video_token_id, pre_tokenizer, normalizer, post_processor, writeable
# the context manager protocol, NLTK's WordNet reader hook, and lru_cache keys
MeteorJava.__exit__.exc_info, wordnet_reader.map_wn, file_size, mtime_ns
# http.server's handler and server hooks (the loopback endpoint for the tests)
loopback.protocol_version, loopback.log_message, loopback.do_POST, loopback.daemon_threads, loopback.close_connection
exc
# pytest, selenium and pydicom read these
pytestmark, binary_location, TransferSyntaxUID, file_meta, SOPClassUID, SOPInstanceUID, Columns, Rows
PhotometricInterpretation, SamplesPerPixel, BitsAllocated, BitsStored, HighBit, PixelRepresentation, PixelData
