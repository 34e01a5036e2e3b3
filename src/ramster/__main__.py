"""`python -m ramster`: the `ramster` program."""
import sys

from .cli.main import main

sys.exit(main())
