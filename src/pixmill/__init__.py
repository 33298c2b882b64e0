"""pixmill: image processing at scale, on MPI workers."""

from __future__ import annotations

from .errors import PixmillError
from .imaging.pipeline import Pipeline, Step, parse_pipeline, run_pipeline

__all__ = ["PixmillError", "Pipeline", "Step", "parse_pipeline", "run_pipeline"]
__version__ = "0.1.0"
