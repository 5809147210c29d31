"""`python -m rwkvrt` runs the rwkvrt command."""
import sys

from .cli import main

sys.exit(main())
