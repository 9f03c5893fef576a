#!/usr/bin/python3 -I
"""linetap: the call recorder's command line (Raspberry Pi OS package).

The modules live in the private directory /usr/lib/linetap (byte-compiled by the
package's postinst). -I: no PYTHON* variables, no user site-packages, not the current
directory on the path; the first-boot unit runs this as root.
"""

import sys

sys.path.insert(0, "/usr/lib/linetap")

from firmware.cli import main

sys.exit(main())
