"""The main window: conversations sidebar, the model chip and the chat, the panels on the right with their rail.

It owns the store (SQLite), the settings, and the engine worker on its QThread, and wires them to the
widgets: the turns of the conversation shown (prompt, streaming reply, saves) are the chat session's
(`desktop.chat_session`); the window keeps the list of conversations, the menus, the theme, and the model.
"""

from __future__ import annotations

import html
import json
import logging
import os
import sqlite3
from pathlib import Path

import torch
from PySide6.QtCore import QCoreApplication, QEvent, Qt, QThread, Slot
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMenu,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from desktop import wheel_guard
from desktop.chat_session import ChatSession
from desktop.chat_view import ChatView
from desktop.db_safety import open_store
from desktop.disk_full import is_disk_full
from desktop.dock_layout import DockLayout
from desktop.engine_worker import EngineWorker
from desktop.finetune_controller import FinetuneController
from desktop.how_it_works_controller import HowItWorksController
from desktop.inspector_controller import InspectorController
from desktop.library_controller import YourModels
from desktop.messages import ModelInfo
from desktop.model_chip import ModelChip
from desktop.model_watch import ModelFileWatch
from desktop.panel_rail import PanelRail
from desktop.panels.finetune import FinetunePanel
from desktop.panels.how_it_works import HowItWorksPanel
from desktop.panels.inspector import InspectorPanel
from desktop.panels.model import ModelPanel
from desktop.panels.prompts import PromptsPanel, default_system_prompt
from desktop.panels.sampling import SamplingPanel
from desktop.paths import DataDirs
from desktop.presets import Presets, resources_dir
from desktop.remote_controller import RemoteModels
from desktop.saving import Saver
from desktop.serve_controller import LocalServer
from desktop.settings import Settings
from desktop.theme import THEMES, apply_theme, code_background, is_dark
from desktop.ui_gc import collect_on_ui_thread
from engine.compiled import prebuilt
from engine.compiled.step import unavailable_reason
from engine.text.thinking import takes_thinking_switch

log = logging.getLogger(__name__)

ROLE = Qt.ItemDataRole.UserRole


class MainWindow(QMainWindow):
    def __init__(self, dirs: DataDirs, *, load_model_on_start: bool = True) -> None:
        super().__init__()
        collect_on_ui_thread()  # never collect widgets on a worker thread
        self.setWindowTitle("Ember")
        self.dirs = dirs
        self.settings = Settings(dirs.settings_file)
        self.saving = Saver(self, self.statusBar().showMessage, dirs.data)
        self.settings.on_not_saved = lambda exc: self.saving.not_saved("a change to the settings", exc)
        opened = open_store(dirs.database)
        self.store = opened.store
        self.store_notice = opened.notice  # shown once the window is up
        self.model_info: ModelInfo | None = None
        self._build_panels()
        self.docks = self._build_docks(self._build_sidebar())
        self.rail = PanelRail({k: d for k, d in self.docks.items() if k != "conversations"})
        self.addToolBar(Qt.ToolBarArea.RightToolBarArea, self.rail)
        self.dock_layout = DockLayout(self, self.docks, self.centralWidget(), self.rail)
        self._start_worker()
        self._build_model_notice()
        self._build_controllers()
        self._connect()
        self._build_menus()
        self._restore_state()
        wheel_guard.guard(self)  # unfocused inputs leave the wheel to the panel around them
        if load_model_on_start:
            self.model_panel.request(self.settings.get("model/path"))

    # Construction

    def _build_panels(self) -> None:
        """The model chip and the chat in the middle, and the panels' widgets (docked by `_build_docks`)."""
        self.chat = ChatView()
        self.model_chip = ModelChip(lambda: self.model_panel.recent_paths())
        chip_row = QHBoxLayout()
        chip_row.setContentsMargins(6, 4, 6, 0)
        chip_row.addWidget(self.model_chip)
        chip_row.addStretch(1)
        middle = QWidget()
        middle_layout = QVBoxLayout(middle)
        middle_layout.setContentsMargins(0, 0, 0, 0)
        middle_layout.setSpacing(0)
        middle_layout.addLayout(chip_row)
        middle_layout.addWidget(self.chat, 1)
        self.setCentralWidget(middle)
        self.sampling = SamplingPanel(
            Presets(resources_dir() / "presets" / "sampling.json", self.dirs.sampling_presets)
        )
        self.prompts = PromptsPanel(Presets(resources_dir() / "presets" / "prompts.json", self.dirs.prompt_presets))
        self.model_panel = ModelPanel(
            self.settings.get("model/recent"),
            self.settings.get("model/device"),
            self.settings.get("model/dtype"),
            self.settings.get("model/compile"),
            None if prebuilt.shipped_here() else unavailable_reason(torch.device("cpu")),
            self.settings.get("model/context"),
        )
        self.inspector_panel = InspectorPanel()
        self.how_panel = HowItWorksPanel()
        self.finetune_panel = FinetunePanel()

    def _build_sidebar(self) -> QWidget:
        """New chat, the search box and the list of conversations."""
        self.search = QLineEdit(
            placeholderText="Search conversations (Ctrl+F)",
            accessibleName="Search conversations",
            clearButtonEnabled=True,
        )
        self.conversation_list = QListWidget(accessibleName="Conversations")
        self.conversation_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.conversation_list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.new_chat = QPushButton("New chat", accessibleName="New chat", toolTip="Start a new conversation (Ctrl+N)")
        sidebar = QWidget()
        side_layout = QVBoxLayout(sidebar)
        side_layout.addWidget(self.new_chat)
        side_layout.addWidget(self.search)
        side_layout.addWidget(self.conversation_list)
        return sidebar

    def _build_docks(self, sidebar: QWidget) -> dict[str, QDockWidget]:
        """The sidebar on the left; the panels on the right, one shown at a time (`desktop.dock_layout`,
        whose `reset` or `restore` decides which), chosen in the rail."""
        docks = {
            "conversations": self._dock("Conversations", sidebar, left=True),
            "prompts": self._dock("Prompts", self.prompts),
            "sampling": self._dock("Sampling", self.sampling),
            "model": self._dock("Model", self.model_panel),
            "inspector": self._dock("Inspector", self.inspector_panel),
            "how_it_works": self._dock("How it works", self.how_panel),
            "finetune": self._dock("Fine-tune", self.finetune_panel),
        }
        return docks

    def _start_worker(self) -> None:
        self.thread = QThread(self)
        self.thread.setObjectName("engine")
        self.worker = EngineWorker()
        self.worker.moveToThread(self.thread)
        self.thread.start()

    def _build_model_notice(self) -> None:
        """The loaded model's file deleted or replaced on disk: said in the status bar and the Model panel."""
        self.model_notice = QLabel(accessibleName="Model file notice", visible=False)
        self.model_notice.linkActivated.connect(self._on_model_notice_link)
        self.statusBar().addPermanentWidget(self.model_notice)
        self.model_watch = ModelFileWatch(self)
        self.model_watch.changed.connect(self._on_model_file_changed)
        status = self.model_panel.status
        status.setTextInteractionFlags(status.textInteractionFlags() | Qt.TextInteractionFlag.LinksAccessibleByMouse)
        status.linkActivated.connect(self._on_model_notice_link)

    def _build_controllers(self) -> None:
        """The workflows, each handed what it uses: remote models, serving, the chat session, the inspector,
        How it works and fine-tuning."""
        show_status = self.statusBar().showMessage
        self.remote = RemoteModels(  # a remote model, when one is in use
            self.model_panel.remote,
            settings=self.settings,
            config_dir=self.dirs.config,
            chatting=self._chatting,
            local_name=lambda: self.model_info.name if self.model_info else None,
            show_status=show_status,
        )
        self.your_models = YourModels(  # the models other apps keep, scanned on a thread of its own
            self.model_panel.library, settings=self.settings, home=Path.home(), env=os.environ
        )
        self.model_panel.serve.port.setValue(self.settings.get("server/port"))
        self.serving = LocalServer(  # the local model served to other apps
            self.model_panel.serve, worker=self.worker, settings=self.settings, show_status=show_status
        )
        self.session = ChatSession(
            store=self.store,
            worker=self.worker,
            chat=self.chat,
            prompts=self.prompts,
            sampling=self.sampling,
            remote=self.remote,
            saving=self.saving,
            show_status=show_status,
            model_info=lambda: self.model_info,
            training=lambda: bool(self.finetune.training),
            new_conversation=self.new_conversation,
        )
        self.inspector = InspectorController(
            self.inspector_panel,
            worker=self.worker,
            session=self.session,
            chat=self.chat,
            remote=self.remote,
            sampling=self.sampling,
            show_status=show_status,
            reveal=lambda min_width: self._reveal("inspector", min_width),
        )
        self.how_it_works = HowItWorksController(
            self.how_panel,
            worker=self.worker,
            session=self.session,
            chat=self.chat,
            sampling=self.sampling,
            reveal=lambda: self._reveal("how_it_works"),
        )
        self.finetune = FinetuneController(
            self.finetune_panel,
            engine=self.worker,
            data_dir=self.dirs.data,
            chatting=self._chatting,
            show_status=show_status,
        )

    def _chatting(self) -> bool:
        """A reply is being written (asked by the controllers made before the session)."""
        return self.session.generating

    def _restore_state(self) -> None:
        """The settings into the widgets, the window's layout, the theme, and the last conversation."""
        self.chat.set_policy(self.settings.get("chat/context_policy"))
        self.chat.max_tokens.setValue(self.settings.get("chat/max_tokens"))
        self.prompts.think.setChecked(self.settings.get("chat/think"))
        preset = self.settings.get("sampling/preset")
        self.sampling.preset_box.setCurrentText(preset)
        self.sampling.set_settings(self.sampling.presets.get(preset) or {})
        self.resize(1280, 820)
        if (geometry := self.settings.geometry("geometry")) is not None:
            self.restoreGeometry(geometry)
        self.dock_layout.restore(self.settings.geometry("state"), self.settings.get("ui/folded_panels"))
        self._apply_theme()
        self._refresh_conversations()
        last = self.settings.get("chat/last_conversation")
        ids = [c.id for c in self.store.conversations()]
        self.open_conversation(last if last in ids else (ids[0] if ids else None))

    def _dock(self, title: str, widget: QWidget, left: bool = False) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(f"dock_{title.lower()}")
        # In a scroll area, so a wide panel (the inspector, say) scrolls instead of forcing every panel
        # sharing its side of the window to its width.
        scroll = QScrollArea(widgetResizable=True, frameShape=QFrame.Shape.NoFrame)
        scroll.setWidget(widget)
        dock.setWidget(scroll)
        area = Qt.DockWidgetArea.LeftDockWidgetArea if left else Qt.DockWidgetArea.RightDockWidgetArea
        self.addDockWidget(area, dock)
        return dock

    def _reveal(self, key: str, min_width: int = 0) -> None:
        """Show the dock ``key`` in place of the panel shown, ``min_width`` wide where the chat keeps its room."""
        self.dock_layout.open(key, min_width)

    def _action(self, menu: QMenu, text: str, slot, shortcut=None) -> QAction:
        action = menu.addAction(text)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(slot)
        return action

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file = bar.addMenu("&File")
        self._action(file, "&New chat", self.new_conversation, QKeySequence.StandardKey.New)
        self._action(file, "&Open model…", self.model_panel.choose_file, QKeySequence.StandardKey.Open)
        file.addSeparator()
        self._action(file, "Export as &Markdown…", lambda: self.export_conversation("md"))
        self._action(file, "Export as &JSON…", lambda: self.export_conversation("json"))
        self._action(file, "&Import JSON…", self.import_conversation)
        file.addSeparator()
        self._action(file, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        chat = bar.addMenu("&Chat")
        self._action(chat, "&Stop", self.session.stop, "Esc")
        self._action(chat, "&Regenerate last reply", self.session.regenerate_last, "Ctrl+R")
        self._action(chat, "&Search conversations", self._focus_search, QKeySequence.StandardKey.Find)
        self._action(chat, "Focus &input", self.chat.input.setFocus, "Ctrl+L")
        self._action(chat, "&Inspect conversation", self.inspector.inspect_last, "Ctrl+I")
        self._action(chat, "How it &works: walk through the model's steps", self.how_it_works.open_from_chat)
        view = bar.addMenu("&View")
        for dock in self.docks.values():
            view.addAction(dock.toggleViewAction())
        self._action(view, "&Reset layout", self.dock_layout.reset, "Ctrl+Shift+L")
        view.addSeparator()
        theme = view.addMenu("&Theme")
        group = QActionGroup(self)
        for name in THEMES:
            action = theme.addAction(name.capitalize())
            action.setCheckable(True)
            action.setChecked(name == self.settings.get("ui/theme"))
            action.triggered.connect(lambda _=False, n=name: self.set_theme(n))
            group.addAction(action)
        self._action(view, "&Larger text", lambda: self.change_font(+1), QKeySequence.StandardKey.ZoomIn)
        self._action(view, "&Smaller text", lambda: self.change_font(-1), QKeySequence.StandardKey.ZoomOut)

    def _connect(self) -> None:
        w = self.worker
        self.model_panel.loadRequested.connect(self._on_load_requested)
        self.model_chip.chosen.connect(self.model_panel.request)
        self.model_chip.openRequested.connect(self.model_panel.choose_file)
        w.loadStarted.connect(self.model_panel.on_load_started)
        w.loadProgress.connect(self.model_panel.on_load_progress)
        w.compileStarted.connect(self.model_panel.on_compile_started)
        w.compiled.connect(self.model_panel.on_compiled)
        w.compiled.connect(self._on_compiled)
        w.loaded.connect(self.model_panel.on_loaded)
        w.loaded.connect(self._on_loaded)
        w.loadFailed.connect(self.model_panel.on_load_failed)
        w.loadFailed.connect(self._on_load_failed)
        self.session.conversationsChanged.connect(self._refresh_conversations)
        self.remote.switched.connect(self._on_model_switched)
        c = self.chat
        c.inputChanged.connect(lambda _text: self.session.refresh_preview())
        c.policy.currentIndexChanged.connect(lambda _i: self.session.refresh_preview())
        c.max_tokens.valueChanged.connect(self._on_max_tokens)
        self.sampling.changed.connect(self._on_sampling_changed)
        self.sampling.presetChosen.connect(lambda name: self.settings.set("sampling/preset", name))
        self.prompts.systemPromptChanged.connect(self._on_system_prompt)
        self.prompts.thinkChanged.connect(self._on_think)
        self.new_chat.clicked.connect(self.new_conversation)
        self.search.textChanged.connect(self._refresh_conversations)
        self.conversation_list.itemActivated.connect(self._on_conversation_item)
        self.conversation_list.itemClicked.connect(self._on_conversation_item)
        self.conversation_list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.conversation_list.customContextMenuRequested.connect(self._on_conversation_menu)

    # Theme and fonts

    def _apply_theme(self) -> None:
        apply_theme(QApplication.instance(), self.settings.get("ui/theme"), self.settings.get("ui/font_size"))
        self.chat.code_background = code_background(is_dark(self.settings.get("ui/theme")))
        if not self.session.generating:  # a reply being written is redrawn in the new colours when it ends
            self.session.show_messages()

    def set_theme(self, name: str) -> None:
        self.settings.set("ui/theme", name)
        self._apply_theme()

    def change_font(self, step: int) -> None:
        self.settings.set("ui/font_size", max(7, min(28, self.settings.get("ui/font_size") + step)))
        self._apply_theme()

    # Conversations

    def _refresh_conversations(self, *_args) -> None:
        query = self.search.text().strip()
        self.conversation_list.clear()
        if query:
            for hit in self.store.search(query):
                item = QListWidgetItem(f"{hit.title}\n   {hit.snippet}")
                item.setData(ROLE, hit.conversation_id)
                self.conversation_list.addItem(item)
            return
        for c in self.store.conversations():
            item = QListWidgetItem(c.title)
            item.setData(ROLE, c.id)
            self.conversation_list.addItem(item)
            if c.id == self.cid:
                self.conversation_list.setCurrentItem(item)

    def _focus_search(self) -> None:
        self.docks["conversations"].show()
        self.search.setFocus()
        self.search.selectAll()

    @Slot(QListWidgetItem)
    def _on_conversation_item(self, item: QListWidgetItem) -> None:
        cid = item.data(ROLE)
        if cid != self.cid:
            self.open_conversation(cid)

    def _on_conversation_menu(self, pos) -> None:
        item = self.conversation_list.itemAt(pos)
        if item is None:
            return
        cid = item.data(ROLE)
        menu = QMenu(self)
        menu.addAction("Rename…", lambda: self.rename_conversation(cid))
        menu.addAction("Delete", lambda: self.delete_conversation(cid))
        menu.exec(self.conversation_list.mapToGlobal(pos))

    def new_conversation(self) -> None:
        if self.session.generating:
            return
        with self.saving("the new conversation") as saved:
            cid = self.store.create_conversation(
                system_prompt=self.prompts.system_prompt(), settings=self.sampling.settings()
            )
        if not saved.ok:
            return
        self.cid = cid
        self.settings.set("chat/last_conversation", self.cid)
        self._refresh_conversations()
        self._forget_shown_conversation()
        self.session.show_messages()
        self.chat.input.setFocus()

    def _forget_shown_conversation(self) -> None:
        """What the panels and the chat's readout showed of the conversation left behind."""
        self.chat.set_readout("")
        self.statusBar().clearMessage()
        self.inspector_panel.clear()
        self.how_panel.clear()

    @property
    def cid(self) -> int | None:
        """The conversation shown (the chat session's)."""
        return self.session.cid

    @cid.setter
    def cid(self, cid: int | None) -> None:
        self.session.cid = cid

    def open_conversation(self, cid: int | None) -> None:
        if self.session.generating:
            return
        if cid != self.cid:
            self._forget_shown_conversation()
        self.cid = cid
        if cid is not None:
            c = self.store.conversation(cid)
            self.prompts.set_system_prompt(c.system_prompt)
            if c.settings:
                self.sampling.set_settings(c.settings)
            self.settings.set("chat/last_conversation", cid)
        self.session.show_messages()
        self._refresh_conversations()

    def rename_conversation(self, cid: int) -> None:
        title, ok = QInputDialog.getText(self, "Rename conversation", "Title:", text=self.store.conversation(cid).title)
        if ok and title.strip():
            with self.saving("the new title"):
                self.store.update_conversation(cid, title=title.strip())
            self._refresh_conversations()

    def delete_conversation(self, cid: int) -> None:
        if self.session.generating and cid == self.cid:
            return
        title = self.store.conversation(cid).title
        if (
            QMessageBox.question(self, "Delete conversation", f"Delete “{title}” and all its messages?")
            != QMessageBox.StandardButton.Yes
        ):
            return
        with self.saving("the deletion") as saved:
            self.store.delete_conversation(cid)
        if not saved.ok:
            return
        if cid == self.cid:
            self.cid = None
            self.session.show_messages()
        self._refresh_conversations()

    def export_conversation(self, kind: str) -> None:
        if self.cid is None:
            return
        title = self.store.conversation(self.cid).title
        path, _ = QFileDialog.getSaveFileName(
            self, "Export conversation", f"{title}.{kind}", "Markdown (*.md)" if kind == "md" else "JSON (*.json)"
        )
        if not path:
            return
        text = (
            self.store.export_markdown(self.cid)
            if kind == "md"
            else json.dumps(self.store.export_json(self.cid), indent=2, ensure_ascii=False)
        )
        try:
            Path(path).write_text(text, encoding="utf-8")
        except OSError as e:
            QMessageBox.warning(self, "Export failed", f"Could not write {path}: {e}")

    def import_conversation(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import conversation", "", "JSON (*.json)")
        if not path:
            return
        try:
            cid = self.store.import_json(json.loads(Path(path).read_text(encoding="utf-8")))
        except sqlite3.OperationalError as e:
            if not is_disk_full(e):
                raise
            self.saving.not_saved(f"the conversation in {Path(path).name}", e)
            return
        except (OSError, ValueError, KeyError, TypeError) as e:
            QMessageBox.warning(self, "Import failed", f"{Path(path).name} is not a conversation Ember can read: {e}")
            return
        self.open_conversation(cid)

    # Settings that belong to the conversation

    @Slot(int)
    def _on_max_tokens(self, value: int) -> None:
        self.settings.set("chat/max_tokens", value)
        self.session.refresh_preview()

    @Slot(bool)
    def _on_think(self, think: bool) -> None:
        self.settings.set("chat/think", think)
        self.session.refresh_preview()

    @Slot(dict)
    def _on_sampling_changed(self, values: dict) -> None:
        if self.cid is not None:
            with self.saving("the conversation's sampling settings"):
                self.store.update_conversation(self.cid, settings=values)

    @Slot(str)
    def _on_system_prompt(self, text: str) -> None:
        if self.cid is not None:
            with self.saving("the system prompt"):
                self.store.update_conversation(self.cid, system_prompt=text)
        self.session.refresh_preview()

    # The model

    @Slot(str, str, str, bool, int)
    def _on_load_requested(self, path: str, device: str, dtype: str, compile: bool, context: int) -> None:
        if self.session.generating:
            self.statusBar().showMessage("Wait for the reply to finish (or stop it) before switching models.", 5000)
            return
        self.settings.set("model/device", device)
        self.settings.set("model/dtype", dtype)
        self.settings.set("model/compile", compile)
        self.settings.set("model/context", self.model_panel.context_choice())
        self.remote.use_local()
        self.session.loading = True
        self.model_chip.show_loading(path)
        self.worker.requestLoad.emit(path, device, dtype, compile, context)

    @Slot(object)
    def _on_loaded(self, info: ModelInfo) -> None:
        self.session.loading = False
        self.model_info = info
        self.settings.set("model/path", self.model_panel.path)
        self.settings.set("model/recent", self.model_panel.recent_paths())
        self.statusBar().showMessage(f"{info.name} ready on {info.device}", 5000)
        self.model_chip.show_ready(info)
        self.model_notice.hide()
        self.model_watch.watch(info.path, info.fingerprint)
        self._on_model_switched()

    @Slot()
    def _on_model_switched(self) -> None:
        """The model that answers changed (loaded, or a remote one, or back to the local one)."""
        local = self.remote.active is None and self.worker.model is not None
        self.prompts.show_model_default(default_system_prompt(self.worker.model.render_chat) if local else None)
        self.prompts.show_thinking_switch(takes_thinking_switch(self.worker.model.template) if local else None)
        if self.remote.active is not None:
            self.setWindowTitle(f"Ember — {self.remote.active['model']} (remote)")
            self.model_chip.show_remote(self.remote.active["model"], self.remote.active["base_url"])
        else:
            name = self.model_info.name if self.model_info else ""
            self.setWindowTitle(f"Ember — {name}" if name else "Ember")
            if self.model_info is not None and not self.session.loading:
                self.model_chip.show_ready(self.model_info)
        self.session.refresh_preview()

    @Slot(str, str)
    def _on_model_file_changed(self, kind: str, path: str) -> None:
        """The loaded model's file was deleted, replaced or put back: the weights are in memory, so the
        chat goes on; the user learns why loading that path again would fail or give another model."""
        name = Path(path).name
        if kind == "restored":
            self.model_notice.hide()
            self.model_panel.status.setText(f"{html.escape(name)} is back on disk as it was loaded.")
            return
        if kind == "deleted":
            short = f"⚠ {name} was deleted: the loaded copy keeps working"
            text = (
                f"{name} was deleted or moved. The model stays loaded in memory, so chatting goes on, "
                f"but it cannot be loaded from {path} again."
            )
            link = ""
        else:
            short = f"⚠ {name} changed on disk"
            text = (
                f"{name} was replaced on disk. The chat still uses the model loaded before; "
                "reload it to use the new file."
            )
            link = " <a href='reload'>Reload</a>"
        log.warning("%s", text)
        self.model_notice.setText(html.escape(short) + link)
        self.model_notice.setToolTip(text)
        self.model_notice.show()
        self.model_panel.status.setText(f"<span style='color:#c0392b'>{html.escape(text)}</span>{link}")

    @Slot(str)
    def _on_model_notice_link(self, _link: str) -> None:
        """Reload the model from the path it was loaded from (the Model panel's, "" for the default)."""
        self.model_panel.request(self.model_panel.path)

    @Slot(object)
    def _on_compiled(self, info: ModelInfo) -> None:
        if self.model_info is not None and self.model_info.path == info.path:
            self.model_info = info
            if self.remote.active is None:
                self.model_chip.show_ready(info)

    @Slot(str)
    def _on_load_failed(self, message: str) -> None:
        self.session.loading = False
        self.model_chip.show_failed(message, self.model_info)
        QMessageBox.warning(self, "Could not load the model", message)

    # Closing

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt override)
        """Cancel a running reply, stop serving, wait for the worker, save the partial reply and the layout."""
        self.worker.cancel()
        self.worker.stop_compiling(wait_s=2.0)  # its compiler processes are killed, not left behind
        self.serving.stop()
        self.finetune.shutdown()  # a run stops after its step and writes a checkpoint
        self.thread.quit()
        self.thread.wait(30_000)
        self.remote.stop()
        self.your_models.stop()
        # Hand what the worker sent before it stopped (the last tokens, the stopped reply) to the slots now:
        # after this the store is closed.
        QCoreApplication.sendPostedEvents(None, QEvent.Type.MetaCall)
        self.session.close()
        self.settings.set_geometry("geometry", self.saveGeometry())
        self.settings.set_geometry("state", self.saveState())
        self.settings.set("ui/folded_panels", self.dock_layout.folded)
        self.settings.set("chat/context_policy", self.chat.policy_key())
        self.settings.sync()
        self.store.close()
        super().closeEvent(event)
