"""`python -m rankrl` runs the command line."""

from rankrl.cli import main

raise SystemExit(main())
