"""Whether this run is ``make faults`` (``TAGSTREAM_FAULTS=full``): the fault suite at full size
(tests/faults/harness.py) and the rows marked ``full_size_only`` (tests/conftest.py). ``make test``
leaves it unset: reduced sizes, those rows skipped."""

from __future__ import annotations

import os

FULL = os.environ.get("TAGSTREAM_FAULTS", "ci") == "full"
