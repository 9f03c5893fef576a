"""Fail the image build if head-office or demo code is importable in the image.

customize.sh runs this with the image's venv python. The device image carries only the
device packages (``DEVICE_PACKAGES`` in customize.sh): an appliance that anyone can
pull from a desk holds nothing of the office (promise 3 of DESIGN.md).
"""

import importlib.util
import sys

FORBIDDEN = ("headoffice", "demo")

found = [name for name in FORBIDDEN if importlib.util.find_spec(name) is not None]
if found:
    sys.exit(
        f"customize: {', '.join(found)} importable in the image ({sys.executable}); copy "
        "only DEVICE_PACKAGES into it (image/customize.sh) and keep them out of the venv"
    )
print(f"customize:   no {' or '.join(FORBIDDEN)} code in the image")
