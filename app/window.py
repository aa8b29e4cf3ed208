"""The main window: viewport in the centre, panels in docks, menus, status bar with a progress bar
and cancel, drag and drop, recent files, undo/redo, confirmation on close while jobs run."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PyQt6.QtCore import QSettings, Qt, QTimer
from PyQt6.QtGui import QAction, QKeySequence
from PyQt6.QtWidgets import (
    QComboBox,
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QToolBar,
)

from app import backend
from app.backend import FaceModel, MeshData, ScanData
from app.document import Document
from app.panels.correspondence import CorrespondencePanel
from app.panels.export import ExportPanel
from app.panels.fit import FitPanel
from app.panels.morph import MorphPanel
from app.panels.training import TrainingPanel
from app.viewport import SCAN_COLOR, Viewport
from app.workers import Job, JobManager, MeshPipeline
from imface.errors import UserError

HEAT_MAX_MM = 5.0  # top of the scan-to-fit distance colour bar

MAX_RECENT = 8
SCAN_FILTER = "Scans (*.obj *.ply *.stl *.off *.glb *.gltf *.xyz *.npy *.npz);;All files (*)"
OTHER_OFFSET = np.array([2.2, 0.0, 0.0], np.float32)  # face B beside the current face (model units)


class MainWindow(QMainWindow):
    def __init__(
        self,
        face_model: FaceModel,
        use_3d: bool = True,
        settings: QSettings | None = None,
        auto_fit: bool = True,
    ):
        super().__init__()
        self.setWindowTitle("ImFace editor")
        self.resize(1400, 900)
        self.setAcceptDrops(True)
        self.settings = settings or QSettings("imface", "editor")
        self.auto_fit = auto_fit
        self.quiet = False  # tests: record errors without showing dialogs
        self.errors: list[str] = []
        self.confirm_close = None  # tests: callable -> bool replaces the close question
        self.view_mode = "face"
        self.landmarks: list[np.ndarray] = []
        self.picking_landmarks = False
        self.template_cache: dict[str, tuple[int, np.ndarray]] = {}
        self.fit_job: Job | None = None
        self._render_pending = False
        self._fit_meshes = 0
        self._closed = False
        self._fit_pending: list = []
        self._fit_total = 0
        self._paint_serial = 0
        self._fit_mesh_shown = 0.0
        self._fit_flush = QTimer(self)
        self._fit_flush.setSingleShot(True)
        self._fit_flush.setInterval(200)
        self._fit_flush.timeout.connect(self._flush_fit_progress)

        self.doc = Document(face_model, self)
        self.jobs = JobManager(self)
        self.pipeline = MeshPipeline(face_model, self)
        self.viewport = Viewport(self, use_3d=use_3d)
        self.setCentralWidget(self.viewport.widget)

        self._build_panels()
        self._build_status()
        self._build_menus()
        self._connect()
        self._update_title()
        self.request_mesh(live=False)

    # ------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------
    def _build_panels(self):
        self.morph_panel = MorphPanel(self.doc)
        self.fit_panel = FitPanel()
        self.corr_panel = CorrespondencePanel()
        self.train_panel = TrainingPanel()
        self.export_panel = ExportPanel()
        self.docks: dict[str, QDockWidget] = {}
        left = Qt.DockWidgetArea.LeftDockWidgetArea
        right = Qt.DockWidgetArea.RightDockWidgetArea
        for name, widget, area in (
            ("Morph", self.morph_panel, left),
            ("Fit", self.fit_panel, right),
            ("Correspondence", self.corr_panel, right),
            ("Training", self.train_panel, right),
            ("Export", self.export_panel, right),
        ):
            dock = QDockWidget(name, self)
            dock.setObjectName(f"dock_{name.lower()}")
            dock.setWidget(widget)
            self.addDockWidget(area, dock)
            self.docks[name] = dock
        for name in ("Correspondence", "Training", "Export"):
            self.tabifyDockWidget(self.docks["Fit"], self.docks[name])
        self.docks["Fit"].raise_()
        self._docks_sized = False

    def showEvent(self, event):  # noqa: N802 - Qt API
        super().showEvent(event)
        if not self._docks_sized:
            self._docks_sized = True
            QTimer.singleShot(0, self._size_docks)

    def _size_docks(self):
        """Give the 3D view the room: docks about 330 px each."""
        self.resizeDocks([self.docks["Morph"], self.docks["Fit"]], [330, 340], Qt.Orientation.Horizontal)

    def _build_status(self):
        sb = self.statusBar()
        self.status_label = QLabel("")
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setTextVisible(True)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.clicked.connect(self.cancel_jobs)
        sb.addWidget(self.status_label, 1)
        sb.addPermanentWidget(self.progress)
        sb.addPermanentWidget(self.cancel_btn)
        self._jobs_changed()

    def _build_menus(self):
        mb = self.menuBar()
        m = mb.addMenu("&File")
        self._action(m, "&Open scan...", self.open_scan_dialog, QKeySequence.StandardKey.Open)
        self._action(m, "Open &checkpoint...", self.open_checkpoint_dialog, "Ctrl+Shift+O")
        self.recent_menu = m.addMenu("Open &recent")
        m.addSeparator()
        self._action(m, "&Save preset...", self.save_preset_dialog, QKeySequence.StandardKey.Save)
        self._action(m, "&Load preset...", self.load_preset_dialog, "Ctrl+L")
        m.addSeparator()
        self._action(m, "&Export mesh...", self.export_mesh_dialog, "Ctrl+E")
        self._action(m, "Export expression &rig...", self.export_rig_dialog)
        self._action(m, "Save scree&nshot...", self.screenshot_dialog, "Ctrl+P")
        m.addSeparator()
        self._action(m, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        e = mb.addMenu("&Edit")
        undo = self.doc.undo_stack.createUndoAction(self, "&Undo")
        undo.setShortcut(QKeySequence.StandardKey.Undo)
        redo = self.doc.undo_stack.createRedoAction(self, "&Redo")
        redo.setShortcuts([QKeySequence.StandardKey.Redo, QKeySequence("Ctrl+Y")])
        e.addAction(undo)
        e.addAction(redo)
        e.addSeparator()
        self._action(e, "&Random face", lambda: self.doc.randomize(self.morph_panel.rng), "Ctrl+R")
        self._action(e, "Reset face", self.doc.reset, "Ctrl+0")
        v = mb.addMenu("&View")
        self._action(v, "Reset &camera", self._reset_camera, "Ctrl+Shift+R")
        self._action(v, "Show &face", lambda: self.set_view_mode("face"), "F1")
        self._action(v, "Show &scan and fit", lambda: self.set_view_mode("scan"), "F2")
        q = v.addMenu("Mesh &quality")
        for name, (fine, coarse) in backend.QUALITY.items():
            a = q.addAction(f"{name} ({fine}^3 grid, coarse {coarse}^3)")
            a.setCheckable(True)
            a.setChecked(name == backend.quality)
            a.triggered.connect(lambda _c=False, n=name, m=q: self.set_quality(n, m))
        v.addSeparator()
        for dock in self.docks.values():
            v.addAction(dock.toggleViewAction())
        h = mb.addMenu("&Help")
        self._action(h, "&About / features in this build", self.about)

        tb = QToolBar("Main", self)
        tb.setObjectName("toolbar")
        self.addToolBar(tb)
        tb.addAction(undo)
        tb.addAction(redo)
        tb.addSeparator()
        tb.addWidget(QLabel(" View: "))
        self.view_combo = QComboBox()
        self.view_combo.addItems(["Face", "Scan and fit"])
        self.view_combo.activated.connect(lambda i: self.set_view_mode("face" if i == 0 else "scan"))
        tb.addWidget(self.view_combo)
        self._rebuild_recent()

    def _action(self, menu, text, slot, shortcut=None) -> QAction:
        a = QAction(text, self)
        if shortcut is not None:
            a.setShortcut(QKeySequence(shortcut) if isinstance(shortcut, str) else shortcut)
        a.triggered.connect(lambda _c=False: slot())
        menu.addAction(a)
        return a

    def _connect(self):
        d = self.doc
        d.codesChanged.connect(self._codes_changed)
        d.interactionFinished.connect(lambda: self.request_mesh(live=False))
        d.scanChanged.connect(self._scan_changed)
        d.fitChanged.connect(self._fit_changed)
        d.colorModeChanged.connect(self._color_mode_changed)
        d.modelChanged.connect(self._update_title)
        d.undo_stack.cleanChanged.connect(lambda _c: self._update_title())
        self.pipeline.morphed.connect(self._on_morphed)
        self.pipeline.meshReady.connect(self._on_mesh)
        self.pipeline.failed.connect(lambda msg: self.set_status(f"Face: {msg}"))
        self.jobs.changed.connect(self._jobs_changed)
        self.morph_panel.presetSaveRequested.connect(self.save_preset_dialog)
        self.morph_panel.presetLoadRequested.connect(self.load_preset_dialog)
        self.morph_panel.error.connect(lambda m: self.show_error("Morph", m))
        self.fit_panel.openRequested.connect(self.open_scan_dialog)
        self.fit_panel.fitRequested.connect(
            lambda: self.start_fit(self.landmarks if len(self.landmarks) == 5 else None)
        )
        self.fit_panel.pickRequested.connect(self.start_landmark_picking)
        self.fit_panel.cancelRequested.connect(self.cancel_fit)
        self.corr_panel.modeRequested.connect(self.choose_color_mode)
        self.corr_panel.compareToggled.connect(self.set_compare)
        self.corr_panel.pickToggled.connect(self.viewport.enable_picking)
        self.train_panel.loadRequested.connect(self.load_checkpoint)
        self.train_panel.error.connect(lambda m: self.show_error("Training", m))
        self.export_panel.meshRequested.connect(self.export_mesh_dialog)
        self.export_panel.rigRequested.connect(self.export_rig_dialog)
        self.export_panel.screenshotRequested.connect(self.screenshot_dialog)
        self.viewport.picked.connect(self._on_picked)

    # ------------------------------------------------------------------------------------------
    # messages, status, progress
    # ------------------------------------------------------------------------------------------
    def show_error(self, title: str, message: str):
        self.errors.append(f"{title}: {message}")
        self.set_status(f"{title}: {message}")
        if self.quiet:
            return
        box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()  # non-blocking: the session keeps running

    def set_status(self, text: str):
        self.status_label.setText(text)

    def _jobs_changed(self):
        running = [j for j in self.jobs.jobs if j.running]
        self.progress.setVisible(bool(running))
        self.cancel_btn.setVisible(bool(running))
        if running:
            self.progress.setFormat(running[-1].title + " %p%")
            if running[-1] is not self.fit_job:
                self.progress.setRange(0, 0)
        self.fit_panel.set_running(
            self.fit_job is not None and self.fit_job.running, self.doc.scan is not None
        )

    def cancel_jobs(self):
        for j in list(self.jobs.jobs):
            j.cancel()
        self.set_status("Cancelling...")

    def run_job(self, title: str, fn, on_success, on_progress=None, on_failure=None) -> Job:
        job = Job(title, fn, self)
        job.succeeded.connect(on_success)
        job.failed.connect(on_failure or (lambda msg: self.show_error(title, msg)))
        job.cancelledSignal.connect(lambda: self.set_status(f"{title}: cancelled"))
        if on_progress is not None:
            job.progress.connect(on_progress)
        return self.jobs.start(job)

    def _update_title(self):
        if self._closed:
            return
        fm = self.doc.face_model
        dirty = "" if self.doc.undo_stack.isClean() else " *"
        self.setWindowTitle(f"ImFace editor - {fm.label}{dirty}")

    # ------------------------------------------------------------------------------------------
    # the face mesh
    # ------------------------------------------------------------------------------------------
    def request_mesh(self, live: bool):
        self.pipeline.request(self.doc.codes, live=live)

    def _codes_changed(self, interactive: bool):
        if self.view_mode != "face" and not interactive:
            pass
        self.request_mesh(live=interactive)

    def _on_morphed(self, vertices: np.ndarray, codes):
        if not self.viewport.update_points("face", vertices):
            return
        if self.doc.mesh is not None:
            self.doc.mesh = MeshData(vertices, self.doc.mesh.faces, self.doc.mesh.colors)
        self.schedule_render()

    def _on_mesh(self, mesh: MeshData, codes, stage: str):
        old = self.doc.mesh
        same_topology = (
            old is not None and old.faces.shape == mesh.faces.shape and np.array_equal(old.faces, mesh.faces)
        )
        self.doc.mesh = MeshData(mesh.vertices, mesh.faces, old.colors if same_topology and old else None)
        if same_topology and self.viewport.update_points("face", mesh.vertices):
            pass
        else:
            self.template_cache.pop("face", None)
            self.viewport.set_mesh("face", self.doc.mesh, colors=None)
            self.viewport.set_visible("face", self.view_mode == "face")
            if self.doc.color_mode != "shaded":
                self._recolor_face()
        self.set_status(f"Face: {len(mesh.vertices)} vertices ({stage})")
        self.schedule_render()
        if self.corr_panel.compare.isChecked() and stage == "fine":
            pass

    def schedule_render(self):
        if self._render_pending:
            return
        self._render_pending = True
        QTimer.singleShot(0, self._render_now)

    def _render_now(self):
        self._render_pending = False
        self.viewport.render()

    def set_quality(self, name: str, menu=None):
        backend.quality = name
        self.doc.face_model.band_cache = None
        if menu is not None:
            for a in menu.actions():
                a.setChecked(a.text().startswith(name + " "))
        self.request_mesh(live=False)

    def _reset_camera(self):
        self.viewport.reset_camera()
        self.schedule_render()

    def set_view_mode(self, mode: str):
        self.view_mode = mode
        self.view_combo.setCurrentIndex(0 if mode == "face" else 1)
        for name in ("face", "other", "face_marks", "other_marks"):
            self.viewport.set_visible(name, mode == "face")
        for name in ("scan", "fit", "landmarks"):
            self.viewport.set_visible(name, mode == "scan")
        self.viewport.reset_camera()
        self.schedule_render()

    # ------------------------------------------------------------------------------------------
    # files: open, drop, recent
    # ------------------------------------------------------------------------------------------
    def dragEnterEvent(self, event):  # noqa: N802 - Qt API
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event):  # noqa: N802 - Qt API
        self.dragEnterEvent(event)

    def dropEvent(self, event):  # noqa: N802 - Qt API
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if not paths:
            event.ignore()
            return
        event.acceptProposedAction()
        self.open_file(paths[0])

    def open_file(self, path: str):
        """Any file: a checkpoint, a preset, or a scan (by its suffix)."""
        suffix = Path(path).suffix.lower()
        if suffix == ".safetensors":
            self.load_checkpoint(path)
        elif suffix == ".json":
            self.load_preset(path)
        else:
            self.open_scan(path)

    def _add_recent(self, path: str):
        items = [p for p in (self.settings.value("recent", []) or []) if p != path]
        items.insert(0, str(path))
        self.settings.setValue("recent", items[:MAX_RECENT])
        self._rebuild_recent()

    def recent_files(self) -> list[str]:
        v = self.settings.value("recent", []) or []
        return [v] if isinstance(v, str) else list(v)

    def _rebuild_recent(self):
        self.recent_menu.clear()
        files = self.recent_files()
        for p in files:
            a = self.recent_menu.addAction(p)
            a.triggered.connect(lambda _c=False, p=p: self.open_file(p))
        self.recent_menu.setEnabled(bool(files))

    def open_scan_dialog(self):
        path, _ = QFileDialog.getOpenFileName(self, "Open scan", "", SCAN_FILTER)
        if path:
            self.open_scan(path)

    def open_scan(self, path: str):
        def done(scan: ScanData):
            self._add_recent(str(path))
            self.doc.set_scan(scan)
            self.set_view_mode("scan")
            self.set_status(f"Scan {Path(path).name}: {len(scan.mesh.vertices)} vertices")
            if self.auto_fit:
                self.start_fit()

        self.run_job(
            "Loading scan",
            lambda job: backend.load_scan(path),
            done,
            on_failure=lambda msg: self.show_error("Cannot open scan", msg),
        )

    def _scan_changed(self):
        scan = self.doc.scan
        self.landmarks = []
        self.viewport.set_markers("landmarks", None)
        self.fit_panel.scan_label.setText(scan.path.name if scan else "no scan")
        self.viewport.set_mesh("scan", scan.mesh if scan else None, color=SCAN_COLOR)
        self.viewport.set_visible("scan", self.view_mode == "scan")
        self._jobs_changed()
        self.schedule_render()

    # ------------------------------------------------------------------------------------------
    # fitting
    # ------------------------------------------------------------------------------------------
    def start_fit(self, landmarks: list | None = None):
        scan = self.doc.scan
        if scan is None:
            self.show_error("Fit", "open a scan first (File > Open scan, or drop one on the window)")
            return
        if self.fit_job is not None and self.fit_job.running:
            return
        fm = self.doc.face_model
        lm = None if landmarks is None else np.asarray(landmarks, np.float32)
        self.fit_panel.plot.clear()
        self.fit_panel.result_label.setText("fitting...")
        self._fit_meshes = 0
        self.progress.setRange(0, 0)

        def work(job: Job):
            last = [0.0]

            def progress(it, loss, mesh, total=0):
                now = time.monotonic()
                if mesh is not None or now - last[0] > 0.05 or (total and it >= total):
                    last[0] = now
                    job.report((it, loss, mesh, total))
                elif job.cancelled:
                    raise_cancel()

            def raise_cancel():
                from app.workers import Cancelled

                raise Cancelled()

            return backend.fit(fm, scan, progress, job.cancel_event, landmarks=lm)

        def ok(outcome):
            self._flush_fit_progress()
            self.fit_job = None
            if self.doc.face_model is not fm or self.doc.scan is not scan:
                self.set_status("Fit finished for a scan or model that is no longer open: ignored")
                return
            self.doc.apply_fit(outcome)
            med = float(np.median(outcome.distances_mm)) if len(outcome.distances_mm) else float("nan")
            self.fit_panel.result_label.setText(
                f"median {med:.2f} mm, 95% {np.percentile(outcome.distances_mm, 95):.2f} mm"
            )
            self.set_status("Fit done: the fitted face is now the current face")
            self._jobs_changed()

        def failed(msg):
            self.fit_job = None
            self.fit_panel.result_label.setText("failed")
            if "by hand" in msg or "align" in msg:
                self.fit_panel.pick_label.setText(
                    "Automatic alignment failed: press 'Pick 5 landmarks by hand' and right-click "
                    "the 5 points on the scan, then Fit."
                )
            self.show_error("Fit failed", msg)
            self._jobs_changed()

        self.fit_job = self.run_job("Fitting", work, ok, self._fit_progress, failed)
        self.fit_job.cancelledSignal.connect(self._fit_cancelled)
        self._jobs_changed()

    def _fit_cancelled(self):
        self.fit_job = None
        self.fit_panel.result_label.setText("cancelled (the face is unchanged)")
        self._jobs_changed()

    def cancel_fit(self):
        if self.fit_job is not None:
            self.fit_job.cancel()

    def _fit_progress(self, payload):
        """Progress arrives often; panel repaints are throttled to ~5 Hz (each repaint of a window
        holding an OpenGL widget costs a composition, tens of ms with software GL)."""
        self._fit_pending.append(payload[:2])
        self._fit_total = payload[3] or self._fit_total
        if not self._fit_flush.isActive():
            self._fit_flush.start()
        mesh = payload[2]
        now = time.monotonic()
        if mesh is not None and now - self._fit_mesh_shown > 1.0:  # live fit mesh at <= 1 Hz
            self._fit_mesh_shown = now
            self._fit_meshes += 1
            if not self.viewport.update_points("fit", mesh.vertices):
                self.viewport.set_mesh("fit", mesh, opacity=0.6)
                self.viewport.set_visible("fit", self.view_mode == "scan")
            self.schedule_render()

    def _flush_fit_progress(self):
        pending, self._fit_pending = self._fit_pending, []
        if not pending:
            return
        self.fit_panel.on_progress_many(pending)
        it = pending[-1][0]
        self.progress.setFormat(f"Fitting: iteration {it}, loss {pending[-1][1]:.3g}")
        if self._fit_total:
            self.progress.setRange(0, self._fit_total)
            self.progress.setValue(min(it, self._fit_total))

    def _fit_changed(self):
        fit = self.doc.fit
        scan = self.doc.scan
        if fit is None:
            self.viewport.set_mesh("fit", None)
            if scan is not None:
                self.viewport.set_mesh("scan", scan.mesh, color=SCAN_COLOR)
        else:
            self.viewport.set_mesh("fit", fit.mesh, opacity=0.35, color=(0.8, 0.8, 0.8))
            if scan is not None:
                # at most 5 mm: scan parts the model does not cover (top of the head, neck) would
                # otherwise stretch the bar to centimetres and turn the face one colour
                hi = float(np.percentile(fit.distances_mm, 98)) if len(fit.distances_mm) else 1.0
                hi = min(max(hi, 0.5), HEAT_MAX_MM)
                self.viewport.set_mesh(
                    "scan", scan.mesh, scalars=fit.distances_mm, scalar_title="distance (mm)", clim=(0.0, hi)
                )
        for name in ("scan", "fit"):
            self.viewport.set_visible(name, self.view_mode == "scan")
        self.schedule_render()

    def start_landmark_picking(self):
        if self.doc.scan is None:
            self.fit_panel.pick_btn.setChecked(False)
            return
        self.set_view_mode("scan")
        self.landmarks = []
        self.picking_landmarks = True
        self.viewport.set_markers("landmarks", None)
        self.viewport.enable_picking(True)
        self.fit_panel.prompt_landmark(0)

    def add_landmark(self, point: np.ndarray):
        self.landmarks.append(np.asarray(point, np.float32))
        self.viewport.set_markers("landmarks", np.array(self.landmarks), color="red")
        self.fit_panel.prompt_landmark(len(self.landmarks))
        if len(self.landmarks) >= 5:
            self.picking_landmarks = False
            self.fit_panel.pick_btn.setChecked(False)
            self.viewport.enable_picking(self.corr_panel.pick.isChecked())
        self.schedule_render()

    # ------------------------------------------------------------------------------------------
    # correspondence
    # ------------------------------------------------------------------------------------------
    def choose_color_mode(self, mode: str):
        image = None
        if mode == "image":
            path, _ = QFileDialog.getOpenFileName(
                self, "Texture image", "", "Images (*.png *.jpg *.jpeg *.bmp)"
            )
            if not path:
                self.corr_panel.show_mode(self.doc.color_mode)
                return
            image = self.read_image(path)
            if image is None:
                self.corr_panel.show_mode(self.doc.color_mode)
                return
        self.doc.set_color_mode(mode, image)

    def read_image(self, path: str) -> np.ndarray | None:
        from PyQt6.QtGui import QImage

        img = QImage(path)
        if img.isNull():
            self.show_error("Texture", f"{Path(path).name}: not an image that can be read")
            return None
        img = img.convertToFormat(QImage.Format.Format_RGB888)
        w, h = img.width(), img.height()
        ptr = img.constBits()
        ptr.setsize(img.sizeInBytes())
        arr = np.frombuffer(ptr, np.uint8).reshape(h, img.bytesPerLine())[:, : w * 3].reshape(h, w, 3)
        return arr.copy()

    def _color_mode_changed(self):
        self.corr_panel.show_mode(self.doc.color_mode)
        self._recolor_face()
        if "other" in self.viewport.data:
            self._show_other()

    def _template_of(self, name: str, codes, mesh: MeshData, job=None) -> np.ndarray:
        cached = self.template_cache.get(name)
        if cached is not None and cached[0] == id(mesh.faces):
            return cached[1]
        return backend.template_coordinates(self.doc.face_model, codes, mesh.vertices)

    def _recolor_face(self):
        mesh, mode = self.doc.mesh, self.doc.color_mode
        if mesh is None:
            return
        if mode == "shaded":
            self._paint_serial += 1
            self.doc.mesh = MeshData(mesh.vertices, mesh.faces, None)
            self.viewport.set_mesh("face", self.doc.mesh)
            self.viewport.set_visible("face", self.view_mode == "face")
            self.schedule_render()
            return
        codes, image, fm = self.doc.codes.copy(), self.doc.texture_image, self.doc.face_model
        key = id(mesh.faces)
        self._paint_serial += 1
        serial = self._paint_serial
        cached = self.template_cache.get("face")

        def work(job):
            if cached is not None and cached[0] == key:
                tmpl = cached[1]
            else:
                tmpl = backend.template_coordinates(fm, codes, mesh.vertices)
            return tmpl, backend.texture_colors(tmpl, mode, image)

        def done(result):
            tmpl, colors = result
            current = self.doc.mesh
            if serial != self._paint_serial or self.doc.color_mode != mode:
                return  # a newer colouring was asked for
            if current is None or id(current.faces) != key:
                return  # the topology changed meanwhile; a new colouring follows
            self.template_cache["face"] = (key, tmpl)
            self.doc.mesh = MeshData(current.vertices, current.faces, colors)
            self.viewport.set_mesh("face", self.doc.mesh, colors=colors)
            self.viewport.set_visible("face", self.view_mode == "face")
            self.schedule_render()

        self.run_job("Painting", work, done)

    def set_compare(self, on: bool):
        if not on:
            for n in ("other", "other_marks", "face_marks"):
                self.viewport.remove(n)
            self.schedule_render()
            return
        if self.doc.slots.get("B") is None:
            self.show_error("Correspondence", "store a face as B first (Morph panel: Store as B)")
            self.corr_panel.compare.setChecked(False)
            return
        self._show_other()

    def _show_other(self):
        codes, fm, mode, image = (
            self.doc.slots["B"],
            self.doc.face_model,
            self.doc.color_mode,
            self.doc.texture_image,
        )

        def work(job):
            mesh = backend.extract(fm, codes)
            tmpl = backend.template_coordinates(fm, codes, mesh.vertices)
            colors = None if mode == "shaded" else backend.texture_colors(tmpl, mode, image)
            return mesh, tmpl, colors

        def done(result):
            mesh, tmpl, colors = result
            if not self.corr_panel.compare.isChecked():
                return
            mesh = MeshData(mesh.vertices, mesh.faces, colors)
            self.template_cache["other"] = (id(mesh.faces), tmpl)
            self.viewport.set_mesh("other", mesh, colors=colors, offset=OTHER_OFFSET)
            self.viewport.set_visible("other", self.view_mode == "face")
            self.viewport.reset_camera()
            self.schedule_render()

        self.run_job("Face B", work, done)

    def _on_picked(self, name: str, index: int, point):
        if self.picking_landmarks and name == "scan":
            self.add_landmark(point)
            return
        if name not in ("face", "other") or "other" not in self.viewport.data:
            return
        self.match(name, index)

    def match(self, name: str, index: int) -> int | None:
        """Show the vertex of the other face that corresponds to vertex `index` of `name`."""
        other = "other" if name == "face" else "face"
        face_t = self._face_template()
        other_t = self.template_cache.get("other", (None, None))[1]
        if face_t is None or other_t is None:
            self.set_status("Correspondence: template coordinates are still being computed")
            return None
        src, dst = (face_t, other_t) if name == "face" else (other_t, face_t)
        j = backend.match_point(src, index, dst)
        p_src = self.viewport.data[name].vertices[index] + self.viewport.offsets[name]
        p_dst = self.viewport.data[other].vertices[j] + self.viewport.offsets[other]
        self.viewport.set_markers(f"{name}_marks", p_src[None], color="yellow")
        self.viewport.set_markers(f"{other}_marks", p_dst[None], color="magenta")
        self.set_status(f"Vertex {index} of {name} matches vertex {j} of {other}")
        self.schedule_render()
        return j

    def _face_template(self):
        mesh = self.doc.mesh
        cached = self.template_cache.get("face")
        if mesh is None:
            return None
        if cached is not None and cached[0] == id(mesh.faces):
            return cached[1]
        tmpl = backend.template_coordinates(self.doc.face_model, self.doc.codes, mesh.vertices)
        self.template_cache["face"] = (id(mesh.faces), tmpl)
        return tmpl

    # ------------------------------------------------------------------------------------------
    # checkpoints, presets
    # ------------------------------------------------------------------------------------------
    def open_checkpoint_dialog(self):
        path, _ = QFileDialog.getOpenFileName(self, "Open checkpoint", "", "Checkpoints (*.safetensors)")
        if path:
            self.load_checkpoint(path)

    def load_checkpoint(self, path: str):
        def done(fm: FaceModel):
            self._add_recent(str(path))
            self.pipeline.set_face_model(fm)
            self.template_cache.clear()
            self.corr_panel.compare.setChecked(False)
            self.doc.set_face_model(fm)
            self.set_status(f"Model {fm.label} loaded")

        self.run_job(
            "Loading checkpoint",
            lambda job: backend.load_model(path),
            done,
            on_failure=lambda msg: self.show_error("Cannot load checkpoint", msg),
        )

    def save_preset_dialog(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save preset", "face.json", "Presets (*.json)")
        if path:
            try:
                self.doc.save_preset(path)
            except OSError as exc:
                self.show_error("Save preset", f"{path}: {exc}")
                return
            self.doc.undo_stack.setClean()
            self._add_recent(path)
            self.set_status(f"Preset saved to {path}")

    def load_preset_dialog(self):
        path, _ = QFileDialog.getOpenFileName(self, "Load preset", "", "Presets (*.json)")
        if path:
            self.load_preset(path)

    def load_preset(self, path: str, ask=None):
        try:
            codes, same = self.doc.read_preset(path)
        except UserError as exc:
            self.show_error("Cannot load preset", str(exc))
            return False
        if not same:
            question = ask or (
                lambda: (
                    QMessageBox.question(
                        self,
                        "Preset from another model",
                        "This preset was saved with a different checkpoint: the same codes will give a "
                        "different face. Load it anyway?",
                    )
                    == QMessageBox.StandardButton.Yes
                )
            )
            if not question():
                return False
        self.doc.load_preset_codes(codes, Path(path).stem)
        self._add_recent(path)
        return True

    # ------------------------------------------------------------------------------------------
    # export
    # ------------------------------------------------------------------------------------------
    def export_mesh_dialog(self):
        path, _ = QFileDialog.getSaveFileName(
            self, "Export mesh", "face.obj", "OBJ (*.obj);;PLY (*.ply);;STL (*.stl);;GLB (*.glb)"
        )
        if path:
            self.export_mesh(path)

    def export_mesh(self, path: str):
        mesh = self.doc.mesh
        if mesh is None:
            self.show_error("Export", "there is no face mesh to export yet")
            return
        self.run_job(
            "Exporting",
            lambda job: backend.export_mesh(mesh, path),
            lambda note: (self.set_status(note), self.export_panel.info.setText(note)),
            on_failure=lambda m: self.show_error("Export failed", m),
        )

    def export_rig_dialog(self):
        folder = QFileDialog.getExistingDirectory(self, "Folder for the expression rig")
        if folder:
            fm, codes = self.doc.face_model, self.doc.codes.copy()
            self.run_job(
                "Exporting rig",
                lambda job: backend.export_rig(fm, codes, folder),
                lambda note: (self.set_status(note), self.export_panel.info.setText(note)),
                on_failure=lambda m: self.show_error("Rig export", m),
            )

    def screenshot_dialog(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save screenshot", "screenshot.png", "PNG (*.png)")
        if path:
            self.save_screenshot(path)

    def save_screenshot(self, path: str):
        try:
            self.viewport.screenshot(path)
        except Exception as exc:  # noqa: BLE001
            self.show_error("Screenshot", f"cannot save the screenshot ({exc})")
            return
        self.set_status(f"Screenshot saved to {path}")

    def about(self):
        lines = [
            f"{'yes' if ok else 'not in this build'}: {name}" for name, ok in backend.feature_status().items()
        ]
        QMessageBox.information(
            self, "ImFace editor", "Model: " + self.doc.face_model.label + "\n\n" + "\n".join(lines)
        )

    # ------------------------------------------------------------------------------------------
    # closing
    # ------------------------------------------------------------------------------------------
    def busy(self) -> bool:
        return self.jobs.busy or self.train_panel.proc.running

    def closeEvent(self, event):  # noqa: N802 - Qt API
        if self.busy():
            if self.confirm_close is not None:
                ok = self.confirm_close()
            elif self.quiet:  # tests / scripted runs: never block on a modal question
                ok = True
            else:
                ok = (
                    QMessageBox.question(
                        self,
                        "Jobs are running",
                        "A fit, an extraction or a training run is still going. Stop it and close?",
                    )
                    == QMessageBox.StandardButton.Yes
                )
            if not ok:
                event.ignore()
                return
        self.shutdown()
        event.accept()

    def shutdown(self):
        if self._closed:
            return
        self._closed = True
        try:
            self.doc.undo_stack.cleanChanged.disconnect()
        except TypeError:
            pass
        self.jobs.cancel_all(wait=5.0)
        self.train_panel.proc.stop()
        self.pipeline.stop()
        self.viewport.close()
