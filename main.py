"""Open the ImFace editor: ``python main.py [SCAN]``."""

import os
import sys

# before numpy loads: its BLAS only ever sees small systems here (the fit's linear solves), and a
# pool of BLAS threads spinning on every core starves the GUI thread and torch's own threads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from app.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
