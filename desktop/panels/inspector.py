"""The inspector: the tokens of a message with their probabilities, the alternatives the model
weighed (click one on a reply to fork the conversation there), attention maps and the logit lens.

Signals:
    inspectRequested()                 -- inspect the conversation up to the selected reply
    cancelRequested()
    forkRequested(int position, int token_id)  -- replace the token at `position` of the inspected
                                          sequence with `token_id` and continue from there
    lensRequested(int position)        -- the worker answers with `show_lens`
    inputTokensRequested()             -- show the tokens of the message being typed
"""

from __future__ import annotations

import html
import math

import torch
from PySide6.QtCore import QEvent, Qt, QUrl, Signal, Slot
from PySide6.QtGui import QColor, QCursor, QPalette
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from desktop.attention_maps import AttentionGrid, AttentionHeatmap
from desktop.messages import Lens
from desktop.panels.token_display import attention_shades, percent, probability_bar, probability_color, visible
from engine.inspection.inspect import Candidate, Inspection

ROLE = 0x0100  # Qt.ItemDataRole.UserRole: an alternative's token id
LOGPROB = ROLE + 1


def alternatives_html(raw: list[Candidate], sampled: list[Candidate] | None) -> str:
    """The alternatives at a position; ``sampled`` None: not known (a remote model's reply)."""
    rows = "".join(
        f"<tr><td>{html.escape(visible(c.text))}</td><td align='right'>{percent(c.logprob)}</td></tr>" for c in raw
    )
    table = f"<b>The model's top choices here</b><table>{rows}</table>"
    if sampled is None:
        return table
    after = ", ".join(f"{html.escape(visible(c.text))} {percent(c.logprob)}" for c in sampled) or "—"
    return f"{table}<br><b>After sampling settings:</b> {after}"


def needs_local(what: str) -> QLabel:
    label = QLabel(
        f"{what} need a local model: a remote server sends its reply's tokens and their probabilities, "
        "not its weights. Go back to a local model in the Model panel and inspect again to see them.",
        wordWrap=True,
        accessibleName=f"{what} need a local model",
    )
    label.setContentsMargins(8, 8, 8, 8)
    label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
    return label


class InspectorPanel(QWidget):
    inspectRequested = Signal()
    cancelRequested = Signal()
    forkRequested = Signal(int, int)
    lensRequested = Signal(int)
    inputTokensRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.result: Inspection | None = None
        self.reply_start = 0  # first position of the inspected reply (forking is allowed from there)
        self.position: int | None = None
        self.remote = False  # the inspection is a remote reply's logprobs: no ids, attention, lens or fork

        self.inspect_button = QPushButton("Inspect conversation", accessibleName="Inspect conversation")
        self.inspect_button.setToolTip("Run the model over the conversation and keep what it saw (Ctrl+I)")
        self.cancel_button = QPushButton("Cancel", accessibleName="Cancel inspection", enabled=False)
        self.progress = QProgressBar(accessibleName="Inspection progress", visible=False)
        self.summary = QLabel(wordWrap=True, accessibleName="Inspection summary")
        self.input_count = QLabel("Your message: 0 tokens", accessibleName="Token count of the message being typed")
        show_input = QPushButton("Show its tokens", accessibleName="Show the tokens of the message being typed")
        show_input.clicked.connect(self.inputTokensRequested)
        input_row = QHBoxLayout()
        input_row.addWidget(self.input_count)
        input_row.addWidget(show_input)
        input_row.addStretch(1)
        top = QHBoxLayout()
        top.addWidget(self.inspect_button)
        top.addWidget(self.cancel_button)
        top.addWidget(self.progress, 1)

        # Tokens
        self.show_ids = QCheckBox("Show token ids", accessibleName="Show token ids")
        self.tokens = QTextBrowser(accessibleName="Tokens coloured by probability", openLinks=False)
        self.tokens.setMouseTracking(True)
        self.tokens.document().setDefaultStyleSheet("a { text-decoration: none; }")  # chips, not links
        self.legend = QLabel(wordWrap=True)
        self.alternatives = QListWidget(accessibleName="Alternatives for the selected token", uniformItemSizes=True)
        self.alternatives.setTextElideMode(Qt.TextElideMode.ElideRight)  # one line each; the tooltip has it all
        self.alternatives.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.alternatives.setToolTip("Double-click an alternative on the reply to fork the conversation with it")
        self.fork_button = QPushButton("Fork with this token", accessibleName="Fork with this token", enabled=False)
        self.selected_label = QLabel(wordWrap=True, accessibleName="Selected token")
        side = QVBoxLayout()
        side.addWidget(self.selected_label)
        side.addWidget(self.alternatives, 1)
        side.addWidget(self.fork_button)
        side_host = QWidget()
        side_host.setLayout(side)
        split = QSplitter()
        split.addWidget(self.tokens)
        split.addWidget(side_host)
        split.setSizes([420, 200])
        tokens_tab = QWidget()
        tl = QVBoxLayout(tokens_tab)
        tl.addWidget(self.legend)
        tl.addWidget(self.show_ids)
        tl.addWidget(split, 1)

        # Attention
        self.layer = QSpinBox(accessibleName="Layer")
        self.head = QComboBox(accessibleName="Head")
        self.heatmap = AttentionHeatmap()
        heatmap_scroll = QScrollArea(widgetResizable=True)
        heatmap_scroll.setWidget(self.heatmap)
        self.grid = AttentionGrid()
        grid_scroll = QScrollArea(widgetResizable=True)
        grid_scroll.setWidget(self.grid)
        self.attention_text = QTextBrowser(accessibleName="Where the selected token looks", openLinks=False)
        self.attention_text.setMaximumHeight(120)
        controls = QHBoxLayout()
        controls.addWidget(QLabel("Layer"))
        controls.addWidget(self.layer)
        controls.addWidget(QLabel("Head"))
        controls.addWidget(self.head)
        controls.addStretch(1)
        attention_tabs = QTabWidget()
        attention_tabs.addTab(heatmap_scroll, "Heatmap")
        grid_page = QWidget()
        gl = QVBoxLayout(grid_page)
        gl.setContentsMargins(0, 0, 0, 0)
        gl.addWidget(
            QLabel("Rows are layers (first at the top), columns are heads. Click a map to open it.", wordWrap=True)
        )
        gl.addWidget(grid_scroll, 1)
        attention_tabs.addTab(grid_page, "All layers × heads")
        attention_tab = QWidget()
        al = QVBoxLayout(attention_tab)
        al.addLayout(controls)
        al.addWidget(attention_tabs, 1)
        al.addWidget(
            QLabel(
                "Where the selected token looks (stronger orange = more attention; the first token, "
                "where many heads rest, is not counted in the scale):",
                wordWrap=True,
            )
        )
        al.addWidget(self.attention_text)

        # Logit lens
        self.lens_label = QLabel("Select a token to see what each layer predicts after it.", wordWrap=True)
        self.lens = QTableWidget(accessibleName="Logit lens")
        lens_tab = QWidget()
        ll = QVBoxLayout(lens_tab)
        ll.addWidget(self.lens_label)
        ll.addWidget(self.lens, 1)

        # Each of these two pages is replaced by a note while a remote reply is shown.
        self.attention_page = QStackedWidget()
        self.attention_page.addWidget(attention_tab)
        self.attention_page.addWidget(needs_local("Attention maps"))
        self.lens_page = QStackedWidget()
        self.lens_page.addWidget(lens_tab)
        self.lens_page.addWidget(needs_local("The logit lens and the layers' predictions"))
        self.tabs = QTabWidget()
        self.tabs.addTab(tokens_tab, "Tokens")
        self.tabs.addTab(self.attention_page, "Attention")
        self.tabs.addTab(self.lens_page, "Logit lens")
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(input_row)
        layout.addWidget(self.summary)
        layout.addWidget(self.tabs, 1)

        self.inspect_button.clicked.connect(self.inspectRequested)
        self.cancel_button.clicked.connect(self.cancelRequested)
        self.show_ids.toggled.connect(lambda _on: self._render_tokens())
        self.tokens.anchorClicked.connect(self._on_token_clicked)
        self.tokens.highlighted.connect(self._on_token_hovered)
        self.alternatives.itemDoubleClicked.connect(lambda _item: self._on_fork())
        self.alternatives.currentItemChanged.connect(lambda item, _prev: self._update_fork_button(item))
        self.fork_button.clicked.connect(self._on_fork)
        self.layer.valueChanged.connect(self._show_heatmap)
        self.head.currentIndexChanged.connect(self._show_heatmap)
        self.grid.picked.connect(self._on_grid_picked)
        self.heatmap.rowPicked.connect(self.select)
        self._show_legend()

    def changeEvent(self, event: QEvent) -> None:  # noqa: N802 (Qt override)
        super().changeEvent(event)
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange):  # another theme
            self._show_legend()
            self._render_tokens()
            for row in range(self.alternatives.count()):
                item = self.alternatives.item(row)
                item.setBackground(probability_bar(item.data(LOGPROB)))

    def _show_legend(self) -> None:
        chips = " ".join(
            f"<span style='background:{probability_color(math.log(p))}'>&nbsp;{word}&nbsp;</span>"
            for p, word in ((0.95, "likely"), (0.5, "unsure"), (0.02, "surprising"))
        )
        self.legend.setText(
            f"Colour: how likely the model found each token given the ones before it — {chips}. "
            "Hover a token for the alternatives; click it to select."
        )

    # Input from the main window

    def set_busy(self, busy: bool) -> None:
        self.inspect_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        self.progress.setVisible(busy)
        if busy:
            self.progress.setValue(0)

    @Slot(int)
    def set_progress(self, percent_done: int) -> None:
        self.progress.setValue(percent_done)

    def mark_stale(self) -> None:
        """The conversation changed: keep showing the old pass, but no forking from it."""
        if self.result is not None:
            self.reply_start = len(self.result.ids)
            self._update_fork_button(self.alternatives.currentItem())
            self.summary.setText(
                "<b>Out of date:</b> the conversation changed since this inspection. "
                "Press “Inspect conversation” to look again."
            )

    def set_input_count(self, n: int) -> None:
        self.input_count.setText(f"Your message: {n:,} token{'s' if n != 1 else ''}")

    def _set_remote(self, remote: bool) -> None:
        self.remote = remote
        self.attention_page.setCurrentIndex(int(remote))
        self.lens_page.setCurrentIndex(int(remote))

    def show_input_tokens(self, pieces: list[str], ids: list[int]) -> None:
        """The text being typed, tokenized (no model pass): chips without probabilities."""
        self._set_remote(False)
        self.result = None
        self.position = None
        self.summary.setText(f"Your message so far: <b>{len(ids)}</b> tokens.")
        self._chips([(visible(p), i, None, False) for p, i in zip(pieces, ids, strict=True)])

    def show_remote(self, result: Inspection, model: str) -> None:
        """A remote reply's tokens (`engine.remote.remote_inspection`): probabilities and the server's
        alternatives; the attention and logit lens pages say they need a local model; no forking."""
        self._set_remote(True)
        self.result = result
        self.reply_start = len(result.ids)  # nothing to fork from: the server cannot continue our tokens
        self.position = None
        known = [lp for lp in result.token_logprobs[1:] if lp is not None]
        mean = sum(known) / len(known) if known else 0.0
        self.summary.setText(
            f"A reply of <b>{html.escape(model)}</b> (remote): {len(known)} tokens, average probability per "
            f"token {math.exp(mean) * 100:.0f}% (perplexity {math.exp(-mean):.1f}), as the server reported them. "
            "Attention, the logit lens and forking need a local model."
        )
        self.alternatives.clear()
        self.selected_label.clear()
        self._update_fork_button(None)
        self._render_tokens()

    def show_inspection(self, result: Inspection, reply_start: int) -> None:
        self._set_remote(False)
        self.result = result
        self.reply_start = reply_start
        self.position = None
        n = len(result.ids)
        known = [lp for lp in result.token_logprobs[1:] if lp is not None]
        mean = sum(known) / len(known) if known else 0.0
        self.summary.setText(
            f"{n} tokens; average probability per token {math.exp(mean) * 100:.0f}% "
            f"(perplexity {math.exp(-mean):.1f}). Tokens of the reply start at #{reply_start}."
        )
        layers = sorted(result.attention)
        self.layer.blockSignals(True)
        self.layer.setRange(layers[0] if layers else 0, layers[-1] if layers else 0)
        self.layer.blockSignals(False)
        n_head = result.attention[layers[0]].shape[0] if layers else 0
        self.head.blockSignals(True)
        self.head.clear()
        self.head.addItem("mean of heads", -1)
        for h in range(n_head):
            self.head.addItem(f"head {h}", h)
        self.head.blockSignals(False)
        self._render_tokens()
        self.grid.show_maps(result.attention)
        self._show_heatmap()

    @Slot(object)
    def show_lens(self, lens: Lens) -> None:
        if lens.position != self.position:
            return
        rows = lens.rows
        k = max((len(r) for r in rows), default=0)
        self.lens.clear()
        self.lens.setRowCount(len(rows))
        self.lens.setColumnCount(k)
        self.lens.setHorizontalHeaderLabels([f"#{i + 1}" for i in range(k)])
        self.lens.setVerticalHeaderLabels([f"layer {i}" for i in range(len(rows))])
        for r, row in enumerate(rows):
            for c, cand in enumerate(row):
                item = QTableWidgetItem(f"{visible(cand.text)}  {percent(cand.logprob)}")
                item.setBackground(QColor(probability_color(cand.logprob)))
                self.lens.setItem(r, c, item)
        self.lens.resizeColumnsToContents()
        self.lens.scrollToBottom()

    # Tokens

    def _chips(self, chips: list[tuple[str, int, float | None, bool]]) -> None:
        palette = QApplication.palette()
        ink, selected = palette.color(QPalette.ColorRole.Text).name(), palette.color(QPalette.ColorRole.Link).name()
        faint = palette.color(QPalette.ColorRole.PlaceholderText).name()
        parts = []
        for pos, (text, token_id, logprob, special) in enumerate(chips):
            bg = probability_color(logprob)
            label = html.escape(text)
            if special:
                label = f"<i>{label}</i>"
            if pos == self.position:  # the selected token: bold, underlined, blue text
                label = f"<b><u><span style='color:{selected}'>{label}</span></u></b>"
            ids = f"<sub style='color:{faint}'>{token_id}</sub>" if self.show_ids.isChecked() and token_id >= 0 else ""
            chip = f"<span style='background-color:{bg};color:{ink}'>&nbsp;{label}{ids}&nbsp;</span>"
            parts.append(f"<a href='tok:{pos}'>{chip}</a>")
        self.tokens.setHtml(" ".join(parts))

    def _render_tokens(self) -> None:
        r = self.result
        if r is None:
            return
        self._chips(
            [(visible(p), i, lp, s) for p, i, lp, s in zip(r.pieces, r.ids, r.token_logprobs, r.special, strict=True)]
        )

    @Slot(QUrl)
    def _on_token_clicked(self, url: QUrl) -> None:
        position = int(url.toString().partition(":")[2] or -1)
        if position >= 0:
            self.select(position)

    @Slot(QUrl)
    def _on_token_hovered(self, url: QUrl) -> None:
        r = self.result
        position = int(url.toString().partition(":")[2] or -1) if url.toString() else -1
        if r is None or position <= 0:
            QToolTip.hideText()
            return
        token_id = f" (id {r.ids[position]})" if r.ids[position] >= 0 else ""
        text = (
            f"<b>{html.escape(visible(r.pieces[position]))}</b>{token_id}, "
            f"probability {percent(r.token_logprobs[position])}<br>"
            + alternatives_html(r.top_raw[position - 1], None if self.remote else r.top_sampled[position - 1])
        )
        QToolTip.showText(QCursor.pos(), text, self.tokens)

    @Slot(int)
    def select(self, position: int) -> None:
        r = self.result
        if r is None or not 0 <= position < len(r.ids):
            return
        self.position = position
        self._render_tokens()
        self.alternatives.clear()
        chosen = r.pieces[position]
        if position == 0:
            self.selected_label.setText(f"<b>{html.escape(visible(chosen))}</b>: the first token has no prediction.")
        else:
            token_id = f" (id {r.ids[position]})" if r.ids[position] >= 0 else ""
            self.selected_label.setText(
                f"<b>{html.escape(visible(chosen))}</b>{token_id} had probability "
                f"{percent(r.token_logprobs[position])}. The model's alternatives here"
                + ("" if self.remote else " (→ after sampling; ✕ sampling drops it)")
                + ":"
            )
            sampled = {c.id: c.logprob for c in r.top_sampled[position - 1]}
            for cand in r.top_raw[position - 1]:
                after = "" if self.remote else f" → {percent(sampled[cand.id])}" if cand.id in sampled else " ✕"
                item = QListWidgetItem(f"{visible(cand.text)}  {percent(cand.logprob)}{after}")
                item.setData(ROLE, cand.id)
                item.setData(LOGPROB, cand.logprob)
                item.setToolTip(item.text())
                item.setBackground(probability_bar(cand.logprob))  # a tint as long as the probability
                self.alternatives.addItem(item)
        self._update_fork_button(self.alternatives.currentItem())
        if self.remote:  # no attention or lens to show: the worker's last inspection is another conversation's
            return
        self._show_attention_row()
        self.heatmap.mark_row(position)
        self.lens_label.setText(
            f"What each layer predicts after <b>{html.escape(visible(chosen))}</b> "
            "(the last row is the model's answer):"
        )
        self.lensRequested.emit(position)

    def _update_fork_button(self, item: QListWidgetItem | None) -> None:
        can = (
            item is not None
            and self.position is not None
            and self.position >= self.reply_start
            and self.result is not None
            and item.data(ROLE) != self.result.ids[self.position]
        )
        self.fork_button.setEnabled(bool(can))
        why = "Forking needs a local model" if self.remote else "Pick a different token of the reply to fork from"
        self.fork_button.setToolTip("" if can else why)

    @Slot()
    def _on_fork(self) -> None:
        item = self.alternatives.currentItem()
        self._update_fork_button(item)
        if self.fork_button.isEnabled():
            self.forkRequested.emit(self.position, item.data(ROLE))

    # Attention

    def _weights(self) -> torch.Tensor | None:
        r = self.result
        layer = self.layer.value()
        if r is None or layer not in r.attention:
            return None
        w = r.attention[layer]  # (n_head, T, T)
        head = self.head.currentData()
        return w.float().mean(0) if head in (None, -1) else w[head]

    @Slot()
    def _show_heatmap(self, *_args) -> None:
        w = self._weights()
        if w is not None:
            self.heatmap.show_map(w, [visible(p) for p in self.result.pieces])
            self._show_attention_row()

    @Slot(int, int)
    def _on_grid_picked(self, layer: int, head: int) -> None:
        self.layer.setValue(layer)
        self.head.setCurrentIndex(head + 1)

    def _show_attention_row(self) -> None:
        w = self._weights()
        if w is None or self.position is None:
            self.attention_text.clear()
            return
        r = self.result
        parts = []
        for pos, (piece, alpha) in enumerate(
            zip(r.pieces, attention_shades(w[self.position], self.position), strict=True)
        ):
            label = html.escape(piece)  # the text as written: the tokens glue back into words
            if pos == self.position:
                label = f"<b><u>{label}</u></b>"
            parts.append(f"<span style='background-color:rgba(255,110,30,{alpha:.2f})'>{label}</span>")
        self.attention_text.setHtml(f"<p style='white-space:pre-wrap'>{''.join(parts)}</p>")

    def clear(self) -> None:
        """Forget the pass shown: another conversation was opened, or a new one begun."""
        self._set_remote(False)
        self.result = None
        self.reply_start = 0
        self.position = None
        for widget in (self.summary, self.tokens, self.alternatives, self.selected_label, self.attention_text):
            widget.clear()
        self._update_fork_button(None)
        self.head.clear()
        self.grid.show_maps({})
        self.heatmap.image.clear()
        self.heatmap.mark_row(None)
        self.lens.clear()
        self.lens.setRowCount(0)
        self.lens.setColumnCount(0)
