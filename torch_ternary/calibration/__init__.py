"""Calibration of ternary models from text prompts alone (the full-precision model is its own teacher).

- :mod:`.prompts`: built-in compositional prompt generator, Mini FLUX captions, prompt files.
- :mod:`.trajectories`: record the teacher pipeline's transformer calls to sharded safetensors.
- :mod:`.layerwise`: activation-aware per-channel codes/scales (closed-form scale, alternation, GPTQ).
- :mod:`.trainable`, :mod:`.distill`: trainable scales / latent weights and flow-matching self-distillation.
- :mod:`.calibrate`: ``calibrate(pipe, prompts, workdir, CalibrationConfig(method=...))``.

See docs/calibration.md.
"""

from .calibrate import METHODS, CalibrationConfig, CalibrationResult, calibrate
from .distill import DistillConfig
from .prompts import PromptSourceError, builtin_prompts, load_prompts, prompts_from_file
from .trajectories import TrajectoryDataset, TrajectoryError, record_trajectories

__all__ = [
    "METHODS",
    "CalibrationConfig",
    "CalibrationResult",
    "DistillConfig",
    "PromptSourceError",
    "TrajectoryDataset",
    "TrajectoryError",
    "builtin_prompts",
    "calibrate",
    "load_prompts",
    "prompts_from_file",
    "record_trajectories",
]
