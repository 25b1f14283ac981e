"""`python -m mimkit.benchmarks`: the same as `mimkit-bench`."""
import sys

from .cli import main

sys.exit(main())
