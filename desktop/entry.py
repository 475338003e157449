"""The frozen program's entry script (PyInstaller runs it as __main__: no relative imports)."""

import sys

from covo_edge.desktop.app import main

sys.exit(main())
