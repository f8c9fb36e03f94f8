from __future__ import annotations

import sys
from pathlib import Path

# `python -m benchmarks` from anywhere: the test services live beside us.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.run import main

main()
