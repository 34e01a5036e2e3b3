"""`python -m ramster.cli`: the `ramster` program (what tests and benchmarks start)."""
import sys

from .main import main

sys.exit(main())
