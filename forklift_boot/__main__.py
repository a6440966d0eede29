import sys

from forklift_boot import cli

sys.exit(cli.main())
