import sys

from relevent.cli import main

sys.exit(main())
