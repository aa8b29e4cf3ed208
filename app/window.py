"""The main window: viewport in the centre, panels in docks, menus, toolbar with undo/redo, status
bar with a progress bar and Cancel. The work behind the panels lives in controllers
(app/controllers); the face mesh comes from the mesh pipeline (app/workers)."""

from __future__ import annotations

import numpy as np
from PyQt6 import sip
from PyQt6.QtCore import QSettings, Qt, QTimer
from PyQt6.QtGui import QAction, QKeySequence
from PyQt6.QtWidgets import (
    QComboBox,
    QDockWidget,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QToolBar,
)

from app.controllers.appearance import AppearanceController
from app.controllers.correspondence import CorrespondenceController
from app.controllers.files import FilesController
from app.controllers.fit import FitController
from app.document import Document
from app.panels.appearance import AppearancePanel
from app.panels.correspondence import CorrespondencePanel
from app.panels.export import ExportPanel
from app.panels.fit import FitPanel
from app.panels.morph import MorphPanel
from app.panels.training import TrainingPanel
from app.viewport import Viewport
from app.workers import JobRunner, JobThread, MeshPipeline, describe
from imface.extract import Mesh
from imface.jobs import Job, Progress
from imface.session import QUALITY, MorphFrame, Session


class MainWindow(QMainWindow):
    def __init__(
        self, session: Session, use_3d: bool = True, settings: QSettings | None = None, auto_fit=True
    ):
        super().__init__()
        self.setWindowTitle("ImFace editor")
        self.resize(1400, 900)
        self.setAcceptDrops(True)
        self.settings = settings or QSettings("imface", "editor")
        self.quiet = False  # tests and scripts: record errors without showing dialogs
        self.errors: list[str] = []
        self.confirm_close = None  # tests: callable -> bool replaces the close question
        self.view_mode = "face"
        self.mesh_stage = ""  # what the face on screen is: coarse, fine, preview, morph, kept
        self._closed = False
        self.warmed = False  # one-time imports for fits, done once the first face is on screen

        self.doc = Document(session, self)
        self.jobs = JobRunner(self)
        self.pipeline = MeshPipeline(session, self)
        self.viewport = Viewport(self, use_3d=use_3d)
        self.setCentralWidget(self.viewport.widget)
        self._build_panels()
        self.files = FilesController(self)
        self.fit = FitController(self, auto_fit)
        self.corr = CorrespondenceController(self)
        self.appearance = AppearanceController(self)
        self._build_status()
        self._build_menus()
        self._connect()
        self._update_title()
        self.request_mesh(live=False)

    # -- construction ------------------------------------------------------------------------------
    def _build_panels(self):
        self.morph_panel = MorphPanel(self.doc)
        self.fit_panel = FitPanel()
        self.corr_panel, self.appearance_panel = CorrespondencePanel(), AppearancePanel()
        self.train_panel = TrainingPanel()
        self.export_panel = ExportPanel()
        self.docks: dict[str, QDockWidget] = {}
        left, right = Qt.DockWidgetArea.LeftDockWidgetArea, Qt.DockWidgetArea.RightDockWidgetArea
        for name, widget, area in (
            ("Morph", self.morph_panel, left),
            ("Fit", self.fit_panel, right),
            ("Appearance", self.appearance_panel, right),
            ("Correspondence", self.corr_panel, right),
            ("Training", self.train_panel, right),
            ("Export", self.export_panel, right),
        ):
            dock = QDockWidget(name, self)
            dock.setObjectName(f"dock_{name.lower()}")
            dock.setWidget(widget)
            self.addDockWidget(area, dock)
            self.docks[name] = dock
        for name in ("Appearance", "Correspondence", "Training", "Export"):
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
        self.status_label.setMinimumWidth(200)
        self.progress = QProgressBar()
        self.progress.setMinimumWidth(120)
        self.progress.setMaximumWidth(160)
        self.progress.setFormat("%p%")  # the words go to the status text, where they fit
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setObjectName("btn_cancel_jobs")
        self.cancel_btn.clicked.connect(self.cancel_jobs)
        sb.addWidget(self.status_label, 1)
        sb.addPermanentWidget(self.progress)
        sb.addPermanentWidget(self.cancel_btn)
        self._mesh_progress: Progress | None = None
        self._jobs_changed()

    def _build_menus(self):
        mb, f = self.menuBar(), self.files
        m = mb.addMenu("&File")
        self._action(m, "&Open scan...", self.fit.open_scan_dialog, QKeySequence.StandardKey.Open)
        self._action(m, "Open &checkpoint...", f.open_checkpoint_dialog, "Ctrl+Shift+O")
        self.recent_menu = m.addMenu("Open &recent")
        m.addSeparator()
        self._action(m, "&Save preset...", f.save_preset_dialog, QKeySequence.StandardKey.Save)
        self._action(m, "&Load preset...", f.load_preset_dialog, "Ctrl+L")
        m.addSeparator()
        self._action(m, "&Export mesh...", f.export_mesh_dialog, "Ctrl+E")
        self._action(m, "Export expression &rig...", f.export_rig_dialog)
        self._action(m, "Save scree&nshot...", f.screenshot_dialog, "Ctrl+P")
        m.addSeparator()
        self._action(m, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        e = mb.addMenu("&Edit")
        self.undo_action = self.doc.undo_stack.createUndoAction(self, "&Undo")
        self.undo_action.setShortcuts([QKeySequence("Ctrl+Z")])
        self.redo_action = self.doc.undo_stack.createRedoAction(self, "&Redo")
        self.redo_action.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        for action in (self.undo_action, self.redo_action):  # also while a slider has the focus
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            e.addAction(action)
            self.addAction(action)
        e.addSeparator()
        self._action(e, "&Random face", self.morph_panel.random_face, "Ctrl+R")
        self._action(e, "&Mean face", self.doc.mean_face, "Ctrl+M")
        self._action(e, "Reset face", self.morph_panel.reset_face, "Ctrl+0")
        v = mb.addMenu("&View")
        self._action(v, "Reset &camera", self._reset_camera, "Ctrl+Shift+R")
        self._action(v, "Show &face", lambda: self.set_view_mode("face"), "F1")
        self._action(v, "Show &scan and fit", lambda: self.set_view_mode("scan"), "F2")
        q = v.addMenu("Mesh &quality")
        for name, (fine, coarse) in QUALITY.items():
            a = q.addAction(f"{name} ({fine}^3 grid, coarse {coarse}^3)")
            a.setCheckable(True)
            a.setChecked(name == self.pipeline.quality)
            a.triggered.connect(lambda _c=False, n=name, m=q: self.set_quality(n, m))
        v.addSeparator()
        for dock in self.docks.values():
            v.addAction(dock.toggleViewAction())
        h = mb.addMenu("&Help")
        self._action(h, "&About", self.files.about)

        tb = QToolBar("Main", self)
        tb.setObjectName("toolbar")
        self.addToolBar(tb)
        tb.addAction(self.undo_action)
        tb.addAction(self.redo_action)
        tb.addSeparator()
        tb.addWidget(QLabel(" View: "))
        self.view_combo = QComboBox()
        self.view_combo.addItems(["Face", "Scan and fit"])
        self.view_combo.activated.connect(lambda i: self.set_view_mode("face" if i == 0 else "scan"))
        tb.addWidget(self.view_combo)
        self.files.rebuild_recent()

    def _action(self, menu, text, slot, shortcut=None) -> QAction:
        a = QAction(text, self)
        if shortcut is not None:
            a.setShortcut(QKeySequence(shortcut) if isinstance(shortcut, str) else shortcut)
        a.triggered.connect(lambda _c=False: slot())
        menu.addAction(a)
        return a

    def _connect(self):
        d = self.doc
        d.codesChanged.connect(lambda interactive: self.request_mesh(live=interactive))
        d.interactionFinished.connect(lambda: self.request_mesh(live=False))
        d.modelChanged.connect(self._update_title)
        d.undo_stack.cleanChanged.connect(lambda _c: self._update_title())
        self.pipeline.morphed.connect(self._on_morphed)
        self.pipeline.meshReady.connect(self._on_mesh)
        self.pipeline.progressed.connect(self._on_mesh_progress)
        self.pipeline.failed.connect(lambda msg: self.set_status(f"Face: {msg}"))
        self.jobs.changed.connect(self._jobs_changed)
        self.morph_panel.presetSaveRequested.connect(self.files.save_preset_dialog)
        self.morph_panel.presetLoadRequested.connect(self.files.load_preset_dialog)
        self.morph_panel.error.connect(lambda m: self.show_error("Morph", m))
        self.viewport.picked.connect(
            lambda name, i, p: self.fit.on_picked(name, p) or self.corr.on_picked(name, i)
        )

    # -- messages, status, jobs ----------------------------------------------------------------------
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
        self.status_label.setToolTip(text)

    def run_job(self, title: str, job: Job, on_done, on_failed=None, on_progress=None, on_cancelled=None):
        """Every long job goes through here: progress bar, Cancel, errors as one line."""
        failed = on_failed or (lambda exc: self.show_error(title, describe(exc)))
        cancelled = on_cancelled or (lambda: self.set_status(f"{title}: cancelled"))

        def done(result):
            self.set_status(f"{title}: done")  # the callback may say more
            on_done(result)

        return self.jobs.start(title, job, done, failed, on_progress, cancelled)

    def _jobs_changed(self):
        running: list[JobThread] = [j for j in self.jobs.jobs if not j.isFinished()]
        record = running[-1].last if running else self._mesh_progress
        busy = bool(running) or record is not None
        self.progress.setVisible(busy)
        self.cancel_btn.setVisible(busy)
        if record is not None:
            fraction = record.fraction
            self.progress.setRange(0, 0 if fraction is None else 100)
            self.progress.setValue(0 if fraction is None else int(100 * fraction))
            self.progress.setToolTip(record.line())
            if running:
                self.set_status(record.line())
        elif running:
            self.progress.setRange(0, 0)
        self.fit.jobs_changed()

    def cancel_jobs(self):
        for thread in list(self.jobs.jobs):
            thread.cancel()
        self.pipeline.cancel()
        self.set_status("Cancelling...")

    def _update_title(self):
        # at interpreter exit with the window still open, the stack is deleted first and says so
        if self._closed or sip.isdeleted(self.doc.undo_stack):
            return
        dirty = "" if self.doc.undo_stack.isClean() else " *"
        self.setWindowTitle(f"ImFace editor - {self.doc.face_model.label}{dirty}")

    # -- the face mesh -------------------------------------------------------------------------------
    def request_mesh(self, live: bool):
        self.pipeline.request(self.doc.codes, live=live)

    def _on_mesh_progress(self, record: Progress | None):
        self._mesh_progress = record
        self._jobs_changed()

    def _on_morphed(self, vertices: np.ndarray, normals, codes, frame: MorphFrame):
        if not frame.sound:
            self.mesh_stage = "kept"
            self.set_status(
                f"Face: the live morph cannot follow here ({frame.reason}); the last good face stays "
                "while a new mesh is extracted"
            )
            return
        if self.doc.mesh is None or not self.viewport.update_points("face", vertices, normals, frame.hidden):
            return
        self.doc.mesh = Mesh(vertices, self.doc.mesh.faces)
        self.mesh_stage = "morph"
        repaired = f", {frame.repaired} vertices re-projected" if frame.repaired else ""
        hidden = 0 if frame.hidden is None else int(frame.hidden.sum())
        remesh = f", {hidden} stretched triangles hidden until the re-mesh" if hidden else ""
        self.set_status(f"Face: {len(vertices)} vertices (live morph{repaired}{remesh}; fine on release)")
        self.schedule_render()

    def _on_mesh(self, mesh: Mesh, normals, codes, stage: str):
        old = self.doc.mesh
        same = (
            old is not None and old.faces.shape == mesh.faces.shape and np.array_equal(old.faces, mesh.faces)
        )
        self.doc.mesh = mesh
        self.mesh_stage = stage
        vp = self.viewport
        if not (same and vp.update_points("face", mesh.vertices, normals)):
            self.doc.face_colors = None
            if self.doc.color_mode != "shaded":
                self.corr.recolor_face()  # the painted mesh replaces the old one when ready
            elif not vp.replace_geometry("face", mesh, normals):
                vp.set_mesh("face", mesh)
                vp.set_visible("face", self.view_mode == "face")
        self.set_status(f"Face: {len(mesh.vertices)} vertices ({stage})")
        self.schedule_render()
        if stage == "fine" and not self.warmed:
            QTimer.singleShot(0, self._warm_up)

    def _warm_up(self):
        """The first fit's one-time costs (imports, torch's optimiser) on the GUI thread once, when
        the first face is on screen; in a worker they would hold the GIL for seconds mid-fit."""
        from app.latency import warm_up

        if not self.warmed:
            warm_up()
            self.warmed = True

    def schedule_render(self):
        if not self._closed:
            self.viewport.render()  # coalesced: one frame, in an event-loop pass of its own

    def set_quality(self, name: str, menu=None):
        self.pipeline.set_quality(name)
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

    # -- files dropped on the window -------------------------------------------------------------------
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
        self.files.open_file(paths[0])

    # -- closing --------------------------------------------------------------------------------------
    def busy(self) -> bool:
        return self.jobs.busy or self.train_panel.proc.running

    def closeEvent(self, event):  # noqa: N802 - Qt API
        if self.busy() and not self._may_close():
            event.ignore()
            return
        self.shutdown()
        event.accept()

    def _may_close(self) -> bool:
        if self.confirm_close is not None:
            return bool(self.confirm_close())
        if self.quiet:  # tests and scripted runs never block on a modal question
            return True
        answer = QMessageBox.question(
            self, "Jobs are running", "A fit, an export or a training run is still going. Stop it and close?"
        )
        return answer == QMessageBox.StandardButton.Yes

    def shutdown(self):
        if self._closed:
            return
        self._closed = True
        try:
            self.doc.undo_stack.cleanChanged.disconnect()
        except TypeError:
            pass
        self.jobs.cancel_all(wait=10.0)
        self.train_panel.proc.stop()
        self.pipeline.stop()
        self.viewport.close()
