"""mimkit: masked-image-modeling foundation models for medical imaging, earth observation, faces and multimodal data.

The Python API is the command line's: `mimkit.pretrain(data="DIR", out="RUN", method="mae")` runs what
`mimkit pretrain --data DIR --out RUN --method mae` runs, with the same names and defaults. The parts live in
the subpackages: mimkit.core (masking, encoders, decoders, methods, training, evaluation, checkpoints),
mimkit.medical, mimkit.remote_sensing, mimkit.benchmarks.
"""
from mimkit.core import __version__
from mimkit.core.api import embed, evaluate, finetune, pretrain
from mimkit.core.registry import build_method, list_methods

__all__ = ["pretrain", "finetune", "evaluate", "embed", "build_method", "list_methods", "__version__"]
