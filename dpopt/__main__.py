"""``python -m dpopt``: the privacy report CLI (same as ``python -m dpopt.report``)."""

import sys

from dpopt.report import main

sys.exit(main())
