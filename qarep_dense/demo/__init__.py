"""The main job's building blocks (tools/demo.py drives them): resumable stages with atomic done-markers,
the collapse verdict over seeds, the classification story's measurements and the summary page."""
from .stages import StageRunner
from .verdict import Criteria, seed_range, verdict

__all__ = ["StageRunner", "Criteria", "seed_range", "verdict"]
