"""Entry point: python main.py [SCAN] [--checkpoint PATH] opens the editor (needs a display)."""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python main.py", description="ImFace editor")
    p.add_argument("scan", nargs="?", help="a scan to open and fit (OBJ, PLY, STL, OFF, GLB, ...)")
    p.add_argument("--checkpoint", help="model checkpoint (default: the shipped model)")
    p.add_argument("--untrained", action="store_true", help="start with a randomly initialised model")
    p.add_argument("--no-3d", action="store_true", help="no 3D view (for headless checks)")
    p.add_argument("--screenshot", help="save a screenshot of the window after start-up and quit")
    return p.parse_args(argv)


def initial_model(args):
    """-> (Session, error message or None). A missing or broken checkpoint opens an untrained
    model, clearly labelled, with the reason shown."""
    from imface.errors import UserError
    from imface.session import DEFAULT_CHECKPOINT, Session

    if args.untrained:
        return Session.untrained(), None
    path = args.checkpoint or DEFAULT_CHECKPOINT
    if not args.checkpoint and not os.path.exists(path):
        return Session.untrained(), (
            "No trained model is shipped in this build (resources/imface_default.safetensors). "
            "The editor runs a randomly initialised, UNTRAINED model: train one in the Training panel "
            "or open a checkpoint (File > Open checkpoint)."
        )
    try:
        return Session.load(path), None
    except UserError as exc:
        return Session.untrained(), f"{exc}. Using an untrained model instead."


def install_excepthook():
    """An unexpected error in a slot is logged and shown; it never aborts the session (PyQt6
    would abort on an unhandled exception)."""
    import traceback

    def hook(exc_type, exc, tb):
        traceback.print_exception(exc_type, exc, tb)
        from PyQt6.QtWidgets import QApplication

        for w in QApplication.topLevelWidgets():
            if hasattr(w, "show_error") and w.isVisible():
                w.show_error("Unexpected error", f"{exc_type.__name__}: {exc} (the session keeps its state)")
                break

    sys.excepthook = hook


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    from PyQt6.QtCore import QTimer
    from PyQt6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("ImFace editor")
    app.setOrganizationName("imface")
    from app.window import MainWindow

    install_excepthook()
    fm, warning = initial_model(args)
    window = MainWindow(fm, use_3d=not args.no_3d)
    window.show()
    if warning:
        QTimer.singleShot(300, lambda: window.show_error("Model", warning))
    if args.scan:
        QTimer.singleShot(100, lambda: window.open_scan(args.scan))
    if args.screenshot:

        def shoot():
            window.save_screenshot(args.screenshot)
            window.close()

        QTimer.singleShot(4000, shoot)
    return int(app.exec())
