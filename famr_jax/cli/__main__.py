"""``python -m famr_jax.cli``."""
import sys

from famr_jax.cli.main import main

sys.exit(main())
