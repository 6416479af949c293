import sys

from propagator.cli import main

sys.exit(main())
