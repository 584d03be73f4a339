"""``python -m hardbatch.cli``: the same as ``python -m hardbatch``."""

import sys

from . import main

sys.exit(main())
