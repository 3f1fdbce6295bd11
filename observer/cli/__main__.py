"""`python -m observer.cli`: the `observer` command without its script (the supervisor uses it)."""

from observer.cli import main

raise SystemExit(main())
