"""ImFace / ImFace++: a nonlinear 3D morphable face model made of implicit neural representations.

The library is pure Python + torch (never Qt); the desktop editor in ``app/`` builds on it.
"""

__version__ = "0.1.0"
