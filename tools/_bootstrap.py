"""Put this checkout first on ``sys.path``, so that ``python tools/x.py`` runs this checkout's qarep_dense
without an install (and never another installed copy). Every tool imports it before qarep_dense:
``import _bootstrap``; Python looks for it first in the script's own folder, ``tools/``."""
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if sys.path[:1] != [ROOT]:
    sys.path.insert(0, ROOT)
