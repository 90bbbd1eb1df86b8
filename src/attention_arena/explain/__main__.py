"""``python -m attention_arena.explain`` = ``arena-explain``."""

import sys

from .cli import main

sys.exit(main())
