"""``python -m demo [--out demo-out]``: see :mod:`demo.run`."""

import sys

from demo.run import main

sys.exit(main())
