"""``python -m attention_arena.compress RUN_DIR`` = ``arena-compress RUN_DIR``."""

import sys

from .cli import main

sys.exit(main())
