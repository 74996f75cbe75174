"""Benchmarks of remote against references from the same run; see remote/bench/.

python benchmarks/bench.py --image .images/gymnasium.sif [--quick] [--json out.json]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from remote.bench import main  # noqa: E402

sys.exit(main())
