import sys

from fuseblk.cli import main

sys.exit(main())
