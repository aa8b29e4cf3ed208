import os

# before numpy loads: see app/__init__.py (small BLAS systems; a spinning BLAS pool starves torch's threads)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from imface.cli import main  # noqa: E402

raise SystemExit(main())
