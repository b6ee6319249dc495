import sys

from leasenet.entry import main

sys.exit(main())
