import sys

from . import script

sys.exit(script())
