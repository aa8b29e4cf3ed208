"""Fit controller (beside the Fit panel): open a scan, fit it with live progress, show the
residual heat map, pick 5 landmarks by hand when the automatic alignment fails."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PyQt6.QtCore import QObject, QTimer
from PyQt6.QtWidgets import QFileDialog

from app.viewport import SCAN_COLOR
from app.workers import JobThread, describe
from imface.config import FitConfig
from imface.errors import AlignmentError
from imface.jobs import Progress
from imface.session import FitOutcome, LoadedScan

HEAT_MAX_MM = 5.0  # top of the scan-to-fit distance colour bar
SCAN_FILTER = "Scans (*.obj *.ply *.stl *.off *.glb *.gltf *.xyz *.npy *.txt *.pts);;All files (*)"
FIT_MESH_INTERVAL = 1.0  # s between live fit meshes in the viewport
PANEL_INTERVAL = 200  # ms between repaints of the loss plot (each costs a window composition)


class FitController(QObject):
    def __init__(self, window, auto_fit: bool = True):
        super().__init__(window)
        self.w = window
        self.auto_fit = auto_fit
        self.config: FitConfig | None = None  # None: the library's defaults
        self.job: JobThread | None = None
        self.landmarks: list[np.ndarray] = []
        self.picking = False
        self._pending: list[tuple[int, float]] = []
        self._mesh_shown = 0.0
        self._flush = QTimer(self)
        self._flush.setSingleShot(True)
        self._flush.setInterval(PANEL_INTERVAL)
        self._flush.timeout.connect(self._flush_progress)
        panel, doc = window.fit_panel, window.doc
        panel.openRequested.connect(self.open_scan_dialog)
        panel.fitRequested.connect(
            lambda: self.start_fit(self.landmarks if len(self.landmarks) == 5 else None)
        )
        panel.pickRequested.connect(self.start_landmark_picking)
        panel.cancelRequested.connect(self.cancel_fit)
        doc.scanChanged.connect(self._scan_changed)
        # the fitted mesh and heat map are new actors (~20 ms): shown in an event-loop pass of their
        # own, not inside the one that applies the fit
        self._show_fit = QTimer(self, singleShot=True, interval=1)
        self._show_fit.timeout.connect(self._fit_changed)
        doc.fitChanged.connect(self._show_fit.start)
        self._show_heat = QTimer(self, singleShot=True, interval=1)
        self._show_heat.timeout.connect(self._heat_map)
        doc.fitChanged.connect(self._show_detail_state)
        doc.detailChanged.connect(self._detail_changed)
        panel.detailToggled.connect(self._toggle_detail)

    @property
    def running(self) -> bool:
        return self.job is not None and not self.job.isFinished()

    def jobs_changed(self):
        self.w.fit_panel.set_running(self.running, self.w.doc.scan is not None)

    # -- detail -------------------------------------------------------------------------------
    def _toggle_detail(self, on: bool):
        fit = self.w.doc.fit
        self.w.doc.set_detail(fit.detail if on and fit is not None else None)

    def _detail_changed(self):
        """Faces from now on carry the document's detail (or none); the one on screen is redone."""
        self.w.pipeline.set_detail(self.w.doc.detail)
        self.w.request_mesh(live=False)
        self._show_detail_state()

    def _show_detail_state(self):
        doc = self.w.doc
        fitted = doc.fit.detail if doc.fit is not None else None
        on = doc.detail is not None
        text = doc.detail.describe() if on else ""
        self.w.fit_panel.show_detail(fitted is not None or on, on, text)

    # -- scans ----------------------------------------------------------------------------------
    def open_scan_dialog(self):
        path, _ = QFileDialog.getOpenFileName(self.w, "Open scan", "", SCAN_FILTER)
        if path:
            self.open_scan(path)

    def open_scan(self, path: str):
        w = self.w

        def done(scan: LoadedScan):
            w.files.add_recent(str(path))
            w.doc.set_scan(scan)
            w.set_view_mode("scan")
            shown = len(scan.display.vertices)
            total = len(scan.scan.vertices)
            note = f" (showing {shown})" if shown < total else ""
            w.set_status(f"Scan {Path(path).name}: {total} vertices{note}, unit {scan.scan.unit}")
            if self.auto_fit:
                self.start_fit()

        w.run_job(
            "Loading scan",
            w.doc.face_model.load_scan_job(path),
            done,
            on_failed=lambda exc: w.show_error("Cannot open scan", describe(exc)),
        )

    def _scan_changed(self):
        w, scan = self.w, self.w.doc.scan
        self.landmarks = []
        w.viewport.set_markers("landmarks", None)
        w.fit_panel.scan_label.setText(scan.path.name if scan else "no scan")
        w.viewport.set_mesh("scan", scan.display if scan else None, color=SCAN_COLOR)
        w.viewport.set_visible("scan", w.view_mode == "scan")
        self.jobs_changed()
        w.schedule_render()

    # -- fitting --------------------------------------------------------------------------------
    def start_fit(self, landmarks: list | None = None):
        w = self.w
        scan = w.doc.scan
        if scan is None:
            w.show_error("Fit", "open a scan first (File > Open scan, or drop one on the window)")
            return
        if self.running:
            return
        session = w.doc.face_model
        points = None if landmarks is None else np.asarray(landmarks, np.float64)
        w.fit_panel.plot.clear()
        w.fit_panel.result_label.setText("fitting...")

        def done(outcome: FitOutcome):
            self._flush_progress()
            if w.doc.face_model is not session or w.doc.scan is not scan:
                w.set_status("Fit finished for a scan or model that is no longer open: ignored")
                return
            w.doc.apply_fit(outcome)
            d = outcome.distances_mm
            w.fit_panel.result_label.setText(
                f"median {np.median(d):.2f} mm, 95% {np.percentile(d, 95):.2f} mm ({len(d)} scan vertices)"
            )
            w.set_status("Fit done: the fitted face is now the current face (Ctrl+Z undoes it)")

        def failed(exc: BaseException):
            w.fit_panel.result_label.setText("failed")
            if isinstance(exc, AlignmentError):
                w.fit_panel.pick_label.setText(
                    "Automatic alignment failed: press 'Pick 5 landmarks by hand' and right-click "
                    "the 5 points on the scan, then Fit."
                )
            w.show_error("Fit failed", describe(exc))

        def cancelled():
            w.fit_panel.result_label.setText("cancelled (the face is unchanged)")
            w.set_status("Fit cancelled")

        job = session.fit_job(scan, points, self.config)
        self.job = w.run_job("Fitting", job, done, failed, self._progress, cancelled)
        self.job.finished.connect(self.jobs_changed)
        self.jobs_changed()

    def cancel_fit(self):
        if self.job is not None:
            self.job.cancel()

    def _progress(self, record: Progress):
        if record.stage != "Fitting":
            return
        self._pending.append((record.done, record.values.get("loss", float("nan"))))
        if not self._flush.isActive():
            self._flush.start()
        mesh, now = record.preview, time.monotonic()
        if mesh is not None and now - self._mesh_shown > FIT_MESH_INTERVAL:
            self._mesh_shown = now
            w = self.w
            if not w.viewport.update_points("fit", mesh.vertices):
                w.viewport.set_mesh("fit", mesh, opacity=0.6)
                w.viewport.set_visible("fit", w.view_mode == "scan")
            w.schedule_render()

    def _flush_progress(self):
        pending, self._pending = self._pending, []
        if pending:
            self.w.fit_panel.on_progress_many(pending)

    def _fit_changed(self):
        w, fit, scan = self.w, self.w.doc.fit, self.w.doc.scan
        if fit is None:
            w.viewport.set_mesh("fit", None)
            if scan is not None:
                w.viewport.set_mesh("scan", scan.display, color=SCAN_COLOR)
        else:
            w.viewport.set_mesh("fit", fit.mesh, opacity=0.35, color=(0.8, 0.8, 0.8))
            if scan is not None:
                # the heat map is a second new actor (~11 ms, the fitted face ~20 ms): a pass of
                # its own, or the two made one 75 ms stall
                self._show_heat.start()
        self._show_views()

    def _heat_map(self):
        w, fit, scan = self.w, self.w.doc.fit, self.w.doc.scan
        if fit is None or scan is None:
            return
        # at most 5 mm: scan parts the model does not cover (top of the head, neck) would
        # otherwise stretch the bar to centimetres and turn the face one colour
        d = fit.display_distances_mm
        top = min(max(float(np.percentile(d, 98)) if len(d) else 1.0, 0.5), HEAT_MAX_MM)
        w.viewport.set_mesh("scan", scan.display, scalars=d, scalar_title="distance (mm)", clim=(0.0, top))
        self._show_views()

    def _show_views(self):
        w = self.w
        for name in ("scan", "fit"):
            w.viewport.set_visible(name, w.view_mode == "scan")
        w.schedule_render()

    # -- landmarks by hand ------------------------------------------------------------------------
    def start_landmark_picking(self):
        w = self.w
        if w.doc.scan is None:
            w.fit_panel.pick_btn.setChecked(False)
            return
        w.set_view_mode("scan")
        self.landmarks = []
        self.picking = True
        w.viewport.set_markers("landmarks", None)
        w.viewport.enable_picking(True)
        w.fit_panel.prompt_landmark(0)

    def add_landmark(self, point: np.ndarray):
        w = self.w
        self.landmarks.append(np.asarray(point, np.float64))
        w.viewport.set_markers("landmarks", np.array(self.landmarks), color="red")
        w.fit_panel.prompt_landmark(len(self.landmarks))
        if len(self.landmarks) >= 5:
            self.picking = False
            w.fit_panel.pick_btn.setChecked(False)
            w.viewport.enable_picking(w.corr_panel.pick.isChecked())
        w.schedule_render()

    def on_picked(self, name: str, point) -> bool:
        """A right-click on the scan while picking: one landmark. True when it was used."""
        if self.picking and name == "scan":
            self.add_landmark(point)
            return True
        return False
