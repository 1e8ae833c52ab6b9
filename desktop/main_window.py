"""The main window: conversations sidebar, the chat, and the Prompts, Sampling and Model panels.

It owns the store (SQLite), the settings, and the engine worker on its QThread, and ties them together:
a sent message is saved, the prompt is rendered and fitted to the context, the reply streams in from the
worker, and the finished (or stopped) reply is saved with what produced it.
"""

from __future__ import annotations

import html
import json
import logging
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from PySide6.QtCore import QCoreApplication, QEvent, Qt, QThread, Slot
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QFileDialog,
    QFrame,
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

from desktop.chat_view import ChatView
from desktop.db_safety import open_store
from desktop.disk_full import WRITE_ERRORS, is_disk_full, not_saved_message
from desktop.engine_worker import EngineWorker
from desktop.inspector_controller import InspectorController
from desktop.model_watch import ModelFileWatch
from desktop.panels.finetune import FinetuneController, FinetunePanel
from desktop.panels.how_it_works import HowItWorksController, HowItWorksPanel
from desktop.panels.inspector import InspectorPanel
from desktop.panels.model import ModelPanel, scrolling
from desktop.panels.prompts import PromptsPanel
from desktop.panels.sampling import SamplingPanel
from desktop.paths import DataDirs
from desktop.presets import Presets, resources_dir
from desktop.prompt_fit import Fit, fit_prompt
from desktop.remote_controller import PREVIEW_NEEDS_LOCAL, RemoteFit, RemoteModels
from desktop.serve_controller import LocalServer
from desktop.settings import Settings
from desktop.store import Message
from desktop.theme import THEMES, apply_theme, code_background, is_dark
from desktop.ui_gc import collect_on_ui_thread
from engine.compiled.step import unavailable_reason

log = logging.getLogger(__name__)

SAVE_PARTIAL_SECONDS = 2.0  # a streaming reply is written to disk at most this often
DISK_FULL_DIALOG_GAP_S = 10.0  # failures closer together than this share one dialog
ROLE = Qt.ItemDataRole.UserRole
FINISHED = {  # the engine's finish_reason, for the readout
    "eos": "done",
    "stop": "hit a stop string",
    "length": "reached the reply length",
    "context": "context full",
    "cancelled": "stopped",
}


class MainWindow(QMainWindow):
    def __init__(self, dirs: DataDirs, *, load_model_on_start: bool = True) -> None:
        super().__init__()
        collect_on_ui_thread()  # never collect widgets on a worker thread
        self.setWindowTitle("Ember")
        self.dirs = dirs
        self.settings = Settings(dirs.settings_file)
        self.settings.on_not_saved = lambda exc: self.not_saved("a change to the settings", exc)
        self._disk_full_warned = -1e9  # when the last "not saved" dialog was shown
        opened = open_store(dirs.database)
        self.store = opened.store
        self.store_notice = opened.notice  # shown once the window is up
        self.cid: int | None = None
        self.model_info: dict[str, Any] | None = None
        self._stream: dict[str, Any] | None = None  # the reply being written
        # A finished reply whose final save failed (a full disk): shown, and saved before the next write.
        self._unsaved_reply: dict[str, Any] | None = None
        self._loading = False  # a model load is under way: prompts tokenized now could be for the wrong model
        self._closed = False  # the store is closed

        self.chat = ChatView()
        self.setCentralWidget(self.chat)
        self.sampling = SamplingPanel(Presets(resources_dir() / "presets" / "sampling.json", dirs.sampling_presets))
        self.prompts = PromptsPanel(Presets(resources_dir() / "presets" / "prompts.json", dirs.prompt_presets))
        self.model_panel = ModelPanel(
            self.settings.get("model/recent"),
            self.settings.get("model/device"),
            self.settings.get("model/dtype"),
            self.settings.get("model/compile"),
            unavailable_reason(torch.device("cpu")),
        )
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
        self.inspector_panel = InspectorPanel()
        self.how_panel = HowItWorksPanel()
        self.finetune_panel = FinetunePanel()
        self.docks = {
            "conversations": self._dock("Conversations", sidebar, left=True),
            "prompts": self._dock("Prompts", self.prompts),
            "sampling": self._dock("Sampling", self.sampling),
            "model": self._dock("Model", scrolling(self.model_panel)),
            "inspector": self._dock("Inspector", self.inspector_panel),
            "how_it_works": self._dock("How it works", self.how_panel),
            "finetune": self._dock("Fine-tune", self.finetune_panel),
        }
        self.tabifyDockWidget(self.docks["prompts"], self.docks["sampling"])
        self.tabifyDockWidget(self.docks["sampling"], self.docks["model"])
        self.tabifyDockWidget(self.docks["model"], self.docks["inspector"])
        self.tabifyDockWidget(self.docks["inspector"], self.docks["how_it_works"])
        self.tabifyDockWidget(self.docks["how_it_works"], self.docks["finetune"])
        self.docks["prompts"].raise_()
        self._build_menus()

        self.thread = QThread(self)
        self.thread.setObjectName("engine")
        self.worker = EngineWorker()
        self.worker.moveToThread(self.thread)
        self.thread.start()
        self.remote = RemoteModels(self, self.model_panel.remote)  # a remote model, when one is in use
        self.model_panel.serve.port.setValue(self.settings.get("server/port"))
        self.serving = LocalServer(self, self.model_panel.serve)  # the local model served to other apps
        # The loaded model's file deleted or replaced on disk: said here and in the Model panel.
        self.model_notice = QLabel(accessibleName="Model file notice", visible=False)
        self.model_notice.linkActivated.connect(self._on_model_notice_link)
        self.statusBar().addPermanentWidget(self.model_notice)
        self.model_watch = ModelFileWatch(self)
        self.model_watch.changed.connect(self._on_model_file_changed)
        status = self.model_panel.status
        status.setTextInteractionFlags(status.textInteractionFlags() | Qt.TextInteractionFlag.LinksAccessibleByMouse)
        status.linkActivated.connect(self._on_model_notice_link)
        self._connect()
        self.inspector = InspectorController(self, self.inspector_panel)
        self.how_it_works = HowItWorksController(self, self.how_panel)
        self.finetune = FinetuneController(self, self.finetune_panel)

        self.chat.set_policy(self.settings.get("chat/context_policy"))
        self.chat.max_tokens.setValue(self.settings.get("chat/max_tokens"))
        preset = self.settings.get("sampling/preset")
        self.sampling.preset_box.setCurrentText(preset)
        self.sampling.set_settings(self.sampling.presets.get(preset) or {})
        self.resize(1280, 820)
        if (geometry := self.settings.geometry("geometry")) is not None:
            self.restoreGeometry(geometry)
        if (state := self.settings.geometry("state")) is not None:
            self.restoreState(state)
        else:  # first run: a readable sidebar, the chat as the widest part, the panels beside it
            self.resizeDocks(
                [self.docks["conversations"], self.docks["prompts"]], [240, 440], Qt.Orientation.Horizontal
            )
        self._apply_theme()
        self._refresh_conversations()
        last = self.settings.get("chat/last_conversation")
        ids = [c.id for c in self.store.conversations()]
        self.open_conversation(last if last in ids else (ids[0] if ids else None))
        if load_model_on_start:
            self.model_panel.request(self.settings.get("model/path"))

    # Construction

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
        self._action(file, "&Open model…", self.model_panel._on_open_file, QKeySequence.StandardKey.Open)
        file.addSeparator()
        self._action(file, "Export as &Markdown…", lambda: self.export_conversation("md"))
        self._action(file, "Export as &JSON…", lambda: self.export_conversation("json"))
        self._action(file, "&Import JSON…", self.import_conversation)
        file.addSeparator()
        self._action(file, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        chat = bar.addMenu("&Chat")
        self._action(chat, "&Stop", self.stop_generation, "Esc")
        self._action(chat, "&Regenerate last reply", self.regenerate_last, "Ctrl+R")
        self._action(chat, "&Search conversations", self._focus_search, QKeySequence.StandardKey.Find)
        self._action(chat, "Focus &input", self.chat.input.setFocus, "Ctrl+L")
        self._action(chat, "&Inspect conversation", lambda: self.inspector.inspect_last(), "Ctrl+I")
        self._action(chat, "How it &works: walk through the model's steps", lambda: self.how_it_works.open_from_chat())
        view = bar.addMenu("&View")
        for dock in self.docks.values():
            view.addAction(dock.toggleViewAction())
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
        w.loadStarted.connect(self.model_panel.on_load_started)
        w.loadProgress.connect(self.model_panel.on_load_progress)
        w.compileStarted.connect(self.model_panel.on_compile_started)
        w.compiled.connect(self.model_panel.on_compiled)
        w.compiled.connect(self._on_compiled)
        w.loaded.connect(self.model_panel.on_loaded)
        w.loaded.connect(self._on_loaded)
        w.loadFailed.connect(self.model_panel.on_load_failed)
        w.loadFailed.connect(self._on_load_failed)
        w.generationStarted.connect(self._on_generation_started)
        w.tokens.connect(self._on_tokens)
        w.generationFinished.connect(self._on_generation_finished)
        w.generationFailed.connect(self._on_generation_failed)
        c = self.chat
        c.sendRequested.connect(self.send)
        c.stopRequested.connect(self.stop_generation)
        c.regenerateRequested.connect(self.regenerate)
        c.continueRequested.connect(self.continue_reply)
        c.editRequested.connect(self.edit_and_resend)
        c.deleteRequested.connect(self.delete_turn)
        c.variantRequested.connect(self.select_variant)
        c.inputChanged.connect(lambda _text: self.refresh_preview())
        c.policy.currentIndexChanged.connect(lambda _i: self.refresh_preview())
        c.max_tokens.valueChanged.connect(self._on_max_tokens)
        self.sampling.changed.connect(self._on_sampling_changed)
        self.sampling.presetChosen.connect(lambda name: self.settings.set("sampling/preset", name))
        self.prompts.systemPromptChanged.connect(self._on_system_prompt)
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
        if self._stream is None:  # a reply being written is redrawn in the new colours when it ends
            self._reload_messages()

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
        if self._stream:
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
        self._reload_messages()
        self.chat.input.setFocus()

    def open_conversation(self, cid: int | None) -> None:
        if self._stream:
            return
        self.cid = cid
        if cid is not None:
            c = self.store.conversation(cid)
            self.prompts.set_system_prompt(c.system_prompt)
            if c.settings:
                self.sampling.set_settings(c.settings)
            self.settings.set("chat/last_conversation", cid)
        self._reload_messages()
        self._refresh_conversations()

    def rename_conversation(self, cid: int) -> None:
        title, ok = QInputDialog.getText(self, "Rename conversation", "Title:", text=self.store.conversation(cid).title)
        if ok and title.strip():
            with self.saving("the new title"):
                self.store.update_conversation(cid, title=title.strip())
            self._refresh_conversations()

    def delete_conversation(self, cid: int) -> None:
        if self._stream and cid == self.cid:
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
            self._reload_messages()
        self._refresh_conversations()

    def _reload_messages(self) -> None:
        self.chat.set_messages(self._messages())
        self.refresh_preview()

    def _messages(self) -> list[Message]:
        """The conversation's messages as saved, with a finished reply the disk had no room for."""
        messages = self.store.messages(self.cid) if self.cid is not None else []
        u = self._unsaved_reply
        if u is None:
            return messages
        return [
            replace(m, content=u["content"], status=u["status"], meta=u["meta"]) if m.id == u["id"] else m
            for m in messages
        ]

    # Writes that can fail: a full disk is said in words and the app goes on; anything else is a bug

    def saving(self, what: str, *, dialog: bool = True) -> _Saving:
        """``with window.saving("your message") as saved:`` a store write; a full disk is shown (a dialog,
        unless ``dialog`` is False, and the status bar) and ``saved.ok`` is False after it."""
        return _Saving(self, what, dialog)

    def not_saved(self, what: str, exc: BaseException, *, dialog: bool = True) -> None:
        message = not_saved_message(what, exc, self.dirs.data)
        log.warning("%s", message)
        self.statusBar().showMessage(message, 20_000)
        # One dialog for a burst of failures (typing in the system prompt writes on every key).
        if dialog and time.monotonic() - self._disk_full_warned > DISK_FULL_DIALOG_GAP_S:
            self._disk_full_warned = time.monotonic()
            QMessageBox.warning(self, "Disk full" if is_disk_full(exc) else "Not saved", message)

    def _save_unsaved_reply(self) -> bool:
        """Write a finished reply that could not be saved before; False while it still cannot be."""
        u = self._unsaved_reply
        if u is None:
            return True
        with self.saving("the last reply") as saved:
            self.store.update_message(u["id"], content=u["content"], status=u["status"], meta=u["meta"])
        if saved.ok:
            self._unsaved_reply = None
        return saved.ok

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
            self.not_saved(f"the conversation in {Path(path).name}", e)
            return
        except (OSError, ValueError, KeyError, TypeError) as e:
            QMessageBox.warning(self, "Import failed", f"{Path(path).name} is not a conversation Ember can read: {e}")
            return
        self.open_conversation(cid)

    # Settings that belong to the conversation

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
        self.refresh_preview()

    # The model

    @Slot(str, str, str, bool)
    def _on_load_requested(self, path: str, device: str, dtype: str, compile: bool) -> None:
        if self._stream:
            self.statusBar().showMessage("Wait for the reply to finish (or stop it) before switching models.", 5000)
            return
        self.settings.set("model/device", device)
        self.settings.set("model/dtype", dtype)
        self.settings.set("model/compile", compile)
        self.remote.use_local()
        self._loading = True
        self.worker.requestLoad.emit(path, device, dtype, compile)

    @Slot(dict)
    def _on_loaded(self, info: dict) -> None:
        self._loading = False
        self.model_info = info
        self.settings.set("model/path", self.model_panel.path)
        self.settings.set("model/recent", self.model_panel.recent_paths())
        self.statusBar().showMessage(f"{info['name']} ready on {info['device']}", 5000)
        self.model_notice.hide()
        self.model_watch.watch(info["path"], info["fingerprint"])
        if self.remote.active is None:
            self.setWindowTitle(f"Ember — {info['name']}")
        self.refresh_preview()

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

    @Slot(dict)
    def _on_compiled(self, info: dict) -> None:
        if self.model_info is not None and self.model_info["path"] == info["path"]:
            self.model_info = info

    @Slot(str)
    def _on_load_failed(self, message: str) -> None:
        self._loading = False
        QMessageBox.warning(self, "Could not load the model", message)

    # The prompt

    def _history(self, upto_turn: int | None = None) -> list[dict[str, str]]:
        messages = self._messages()
        if upto_turn is not None:
            messages = [m for m in messages if m.turn < upto_turn]
        system = self.prompts.system_prompt().strip()
        head = [{"role": "system", "content": system}] if system else []
        return head + [{"role": m.role, "content": m.content} for m in messages]

    def _fit(self, messages: list[dict[str, str]]) -> Fit:
        return fit_prompt(self.worker.model, messages, self.chat.max_tokens.value(), self.chat.policy_key())

    @Slot(int)
    def _on_max_tokens(self, value: int) -> None:
        self.settings.set("chat/max_tokens", value)
        self.refresh_preview()

    def refresh_preview(self) -> None:
        if self.remote.active is not None:
            if self._stream is None and not self._closed:
                self.prompts.show_unavailable(PREVIEW_NEEDS_LOCAL)
                self.chat.set_context_note("")
            return
        lm = self.worker.model
        if lm is None or self._stream is not None or self._closed:  # closed: a late typing timer
            return
        messages = self._history()
        pending = self.chat.input.toPlainText().strip()
        if pending:
            messages.append({"role": "user", "content": pending})
        fit = self._fit(messages)
        self.prompts.show_preview(fit.text, len(fit.ids), lm.context_length)
        self.chat.set_context_note(fit.note)

    # Generation

    def _ready(self, messages: list[dict[str, str]]) -> Fit | None:
        """``messages`` rendered and fitted to the context, or None (the user is told why) when they cannot
        be sent. Checked before anything is saved or deleted, so a refusal changes nothing."""
        if self.remote.active is not None:  # sent as is: the server applies its template and limits
            return RemoteFit("", [], 0, False, "", messages=tuple(messages))
        if self.worker.model is None or self._loading:
            QMessageBox.information(self, "No model", "Wait for the model to finish loading.")
            return None
        if self.finetune.training:  # the run holds the model: a reply would wait for the whole run
            QMessageBox.information(self, "Training", "The model is being fine-tuned: stop the run or wait for it.")
            return None
        fit = self._fit(messages)
        if fit.refused:
            QMessageBox.warning(self, "Cannot send", fit.note)
            return None
        return fit

    @property
    def generating(self) -> bool:
        return self._stream is not None

    def _start(
        self, fit: Fit, turn: int | None, prefix_ids: list[int] | None = None, extend_last: bool = False
    ) -> None:
        """Generate a reply to the fitted prompt: a new turn, or a new variant of ``turn``. With ``prefix_ids``
        the reply starts with those tokens (a fork from the inspector); with ``extend_last`` it continues the
        last reply, whose text they are. Nothing starts when the reply's row cannot be written."""
        max_tokens = self.chat.max_tokens.value()
        prefix_ids = prefix_ids or []
        prefix = self.worker.model.tokenizer.decode(prefix_ids, skip_special=True) if prefix_ids else ""
        ids = fit.ids + prefix_ids
        settings = self.sampling.settings()
        meta = self._provenance(settings)
        with self.saving("the reply") as saved:
            if extend_last:
                message_id = self.store.messages(self.cid)[-1].id
                self.store.update_message(message_id, status="interrupted")  # until it is complete again
            else:
                message_id = self.store.add_message(
                    self.cid, "assistant", prefix, status="interrupted", meta=meta, turn=turn
                )
        if not saved.ok:
            self._reload_messages()
            return
        self._stream = {
            "id": message_id,
            "prefix": prefix,
            "text": "",
            "meta": meta,
            "tokens": 0,
            "t0": time.monotonic(),
            "saved": time.monotonic(),
            "prompt_tokens": len(ids),
            "dropped": fit.note,
        }
        if extend_last or turn is not None:
            self._reload_messages()
            self.chat.drop_last()
        message = self.store.messages(self.cid)[-1]
        self.chat.begin_stream(message)
        self.chat.set_busy(True)
        if isinstance(fit, RemoteFit):
            self.worker.generate_remote(list(fit.messages), settings, self.remote.options(max_tokens))
        else:
            self.worker.generate(ids, settings, {"max_tokens": max_tokens})

    def _provenance(self, settings: dict) -> dict:
        if self.remote.active is not None:  # the endpoint and model id; never the key
            active = self.remote.active
            return {"model": active["model"], "endpoint": active["base_url"], "settings": settings}
        info = self.model_info or {}
        return {
            "model": info.get("path"),
            "model_fingerprint": info.get("fingerprint"),
            "template": info.get("template"),
            "settings": settings,
        }

    def send(self, text: str) -> None:
        if self._stream:
            return
        fit = self._ready(self._history() + [{"role": "user", "content": text}])
        if fit is None:
            self.chat.input.setPlainText(text)  # nothing was sent: give the text back
            return
        if not self._save_unsaved_reply():
            self.chat.input.setPlainText(text)
            return
        if self.cid is None:
            self.new_conversation()
            if self.cid is None:  # the disk had no room for it
                self.chat.input.setPlainText(text)
                return
        with self.saving("your message") as saved:
            if self.store.conversation(self.cid).title == "New chat":
                self.store.update_conversation(self.cid, title=text.splitlines()[0][:48])
            self.store.add_message(self.cid, "user", text)
        if not saved.ok:
            self.chat.input.setPlainText(text)  # given back, to send again once there is room
            self._refresh_conversations()
            return
        self._reload_messages()
        self._refresh_conversations()
        self._start(fit, None)

    def regenerate(self, turn: int) -> None:
        self._new_version(turn, "Regenerate reply", "Writing another version of this reply")

    def fork(self, turn: int, prefix_ids: list[int]) -> None:
        """A new version of the reply at ``turn`` that starts with ``prefix_ids`` (the reply's tokens up to
        a point, then the one the user picked in the inspector) and continues from there."""
        self._new_version(turn, "Fork reply", "Forking this reply", prefix_ids)

    def _new_version(self, turn: int, title: str, doing: str, prefix_ids: list[int] | None = None) -> None:
        """Write a new version of the reply at ``turn``, after asking before deleting the messages after it."""
        if self._stream:
            return
        if not self._save_unsaved_reply():
            return
        later = sum(m.turn > turn for m in self.store.messages(self.cid))
        if later and (
            QMessageBox.question(
                self, title, f"{doing} deletes the {later} message{'s' if later != 1 else ''} after it. Go on?"
            )
            != QMessageBox.StandardButton.Yes
        ):
            return
        fit = self._ready(self._history(upto_turn=turn))
        if fit is None:
            return
        with self.saving("the change") as saved:
            self.store.truncate(self.cid, turn + 1)
        if saved.ok:
            self._start(fit, turn, prefix_ids=prefix_ids)

    def regenerate_last(self) -> None:
        messages = self.store.messages(self.cid) if self.cid is not None else []
        if messages and messages[-1].role == "assistant":
            self.regenerate(messages[-1].turn)

    def continue_reply(self, turn: int) -> None:
        if self._stream or not self._save_unsaved_reply():
            return
        messages = self.store.messages(self.cid)
        if not messages or messages[-1].turn != turn:
            self.statusBar().showMessage("Only the last reply can be continued.", 5000)
            return
        if self.remote.active is not None:
            self.statusBar().showMessage(
                "Continuing a reply needs a local model: the chat API cannot resume an assistant message.", 8000
            )
            return
        fit = self._ready(self._history(upto_turn=turn))
        if fit is not None:
            content = self.worker.model.tokenizer.encode(messages[-1].content, add_bos=False)
            self._start(fit, turn, prefix_ids=content, extend_last=True)

    def edit_and_resend(self, turn: int, text: str) -> None:
        if self._stream:
            return
        fit = self._ready(self._history(upto_turn=turn) + [{"role": "user", "content": text}])
        if fit is None or not self._save_unsaved_reply():
            return
        with self.saving("your edited message") as saved:
            self.store.truncate(self.cid, turn)
            self.store.add_message(self.cid, "user", text)
        self._reload_messages()
        if saved.ok:
            self._start(fit, None)
        else:
            self.chat.input.setPlainText(text)  # the edit is not lost: send it once there is room

    def delete_turn(self, turn: int) -> None:
        if self._stream or not self._save_unsaved_reply():
            return
        with self.saving("the deletion"):
            self.store.delete_turn(self.cid, turn)
        self._reload_messages()

    def select_variant(self, turn: int, variant: int) -> None:
        if self._stream or not self._save_unsaved_reply():
            return
        with self.saving("the choice of version"):
            self.store.select_variant(self.cid, turn, variant)
        self._reload_messages()

    def stop_generation(self) -> None:
        if self._stream:
            self.worker.cancel()

    @Slot(dict)
    def _on_generation_started(self, info: dict) -> None:
        if self._stream is not None:
            self._stream["context"] = info["context_length"]

    @Slot(list)
    def _on_tokens(self, batch: list) -> None:
        s = self._stream
        if s is None:
            return
        s["text"] += "".join(t["text"] for t in batch)
        s["tokens"] += len(batch)
        self.chat.stream_text(s["prefix"] + s["text"])
        elapsed = max(time.monotonic() - s["t0"], 1e-6)
        used = s["prompt_tokens"] + s["tokens"]
        where = f"context {used:,}/{s['context']:,}" if s.get("context") else "remote"
        self.chat.set_readout(f"{s['tokens'] / elapsed:.1f} tokens/s · {where}")
        if time.monotonic() - s["saved"] > SAVE_PARTIAL_SECONDS:
            # The reply goes on when the disk is full; the status bar says so, the final save tries again.
            with self.saving("the reply so far", dialog=False):
                self.store.update_message(s["id"], content=s["prefix"] + s["text"])
            s["saved"] = time.monotonic()

    @Slot(dict)
    def _on_generation_finished(self, result: dict) -> None:
        s = self._stream
        if s is None:
            return
        status = "stopped" if result["finish_reason"] == "cancelled" else "complete"
        meta = {
            **s["meta"],
            "seed": result["seed"],
            "finish_reason": result["finish_reason"],
            "prompt_tokens": result["prompt_tokens"],
            "generated_tokens": result["generated_tokens"],
            "decode_tps": round(result["decode_tps"], 2),
        }
        if result.get("logprobs"):  # a remote reply's per-token logprobs, for the inspector
            meta["logprobs"] = result["logprobs"]
        self._finish(s["prefix"] + result["text"], status, meta)
        self.chat.set_readout(
            f"{result['generated_tokens']} tokens · {result['decode_tps']:.1f} tokens/s · "
            + FINISHED.get(result["finish_reason"], result["finish_reason"])
        )

    @Slot(str)
    def _on_generation_failed(self, message: str) -> None:
        s = self._stream
        if s is not None:
            self._finish(s["prefix"] + s["text"], "interrupted", s["meta"])
        QMessageBox.warning(self, "Generation failed", message)

    def _finish(self, text: str, status: str, meta: dict) -> None:
        self._unsaved_reply = {"id": self._stream["id"], "content": text, "status": status, "meta": meta}
        self._save_unsaved_reply()  # when the disk is full, kept on screen and saved before the next write
        self._stream = None
        self.chat.set_busy(False)
        self._reload_messages()

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
        # Hand what the worker sent before it stopped (the last tokens, the stopped reply) to the slots now:
        # after this the store is closed.
        QCoreApplication.sendPostedEvents(None, QEvent.Type.MetaCall)
        if self._stream is not None:
            s = self._stream
            self._unsaved_reply = {
                "id": s["id"],
                "content": s["prefix"] + s["text"],
                "status": "stopped",
                "meta": s["meta"],
            }
            self._stream = None
        if self._unsaved_reply is not None:
            u = self._unsaved_reply
            try:  # no dialog now: the window is closing
                self.store.update_message(u["id"], content=u["content"], status=u["status"], meta=u["meta"])
            except WRITE_ERRORS as e:
                if not is_disk_full(e):
                    raise
                log.warning("%s", not_saved_message("the last reply", e, self.dirs.data))
        self.settings.set_geometry("geometry", self.saveGeometry())
        self.settings.set_geometry("state", self.saveState())
        self.settings.set("chat/context_policy", self.chat.policy_key())
        self.settings.sync()
        self.store.close()
        self._closed = True
        super().closeEvent(event)


class _Saving:
    """The context manager of ``MainWindow.saving``: swallows a full disk (after showing it), nothing else."""

    def __init__(self, window: MainWindow, what: str, dialog: bool) -> None:
        self.window, self.what, self.dialog = window, what, dialog
        self.ok = True

    def __enter__(self) -> _Saving:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or not isinstance(exc, WRITE_ERRORS) or not is_disk_full(exc):
            return False
        self.ok = False
        self.window.not_saved(self.what, exc, dialog=self.dialog)
        return True
