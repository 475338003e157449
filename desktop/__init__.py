"""The desktop side: `covo-edge-app` (the runtime, the server and the page, no torch) and its one-folder
PyInstaller build (`python -m covo_edge.desktop.build`; the bundle extra)."""
