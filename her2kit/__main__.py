import sys

from her2kit.cli import main

sys.exit(main())
