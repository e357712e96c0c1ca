"""`python -m msseg_ros.bag ...` = `msseg-bag ...`."""

import sys

from msseg_ros.bag.cli import main

sys.exit(main())
