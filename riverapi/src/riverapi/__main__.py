"""``python -m riverapi``: the command line."""

from riverapi.cli import main

raise SystemExit(main())
