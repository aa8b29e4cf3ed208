"""The ImFace editor (PyQt6 + PyVista) over the `imface` library.

Set before numpy loads (every entry point of the editor imports this package first): numpy's
BLAS only ever sees small systems here (the fit's linear solves), and a pool of BLAS threads
spinning on every core starves the GUI thread and torch's own threads.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
