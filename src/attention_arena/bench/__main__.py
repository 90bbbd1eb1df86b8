"""``python -m attention_arena.bench`` = ``arena-bench``."""

import sys

from .cli import main

sys.exit(main())
