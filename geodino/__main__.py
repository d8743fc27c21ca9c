import sys

from geodino.cli import main

sys.exit(main())
