"""`python -m lrfree.bench`: see `lrfree.bench.cli`."""
from lrfree.bench.cli import main

raise SystemExit(main())
