import sys

from leasenet.cli import main

sys.exit(main())
