"""`python -m provisioner` is the `provisioner` command."""

from provisioner.cli import main

raise SystemExit(main())
