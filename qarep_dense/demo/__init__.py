"""The main job (``main_job.Demo``; tools/demo.py is its command line) and its building blocks: resumable
stages with atomic done-markers, the collapse verdict over seeds, the classification story's measurements,
the speed measurement and the summary page."""
from .stages import StageRunner
from .verdict import Criteria, seed_range, verdict

__all__ = ["StageRunner", "Criteria", "seed_range", "verdict"]
