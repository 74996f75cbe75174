"""``python -m remote.bench``: see :mod:`remote.bench`."""

import sys

from . import main

sys.exit(main())
