"""The six pages of "How it works", one widget per step; each shows its part of an `Explanation`.

Every page has a ``title``, a plain-language ``caption`` and ``show(explanation)``. Every page fits its
dock at any width: rows of controls wrap (`FlowBox`), side-by-side parts stack when narrow.
"""

from __future__ import annotations

import html
import math

import numpy as np
import pyqtgraph as pg
import torch
from PySide6.QtCore import QEvent, QSize, Qt, Signal, Slot
from PySide6.QtGui import QColor, QPalette, QResizeEvent
from PySide6.QtWidgets import (
    QApplication,
    QBoxLayout,
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from desktop.panels.charts import GREY, ORANGE, styled
from desktop.panels.token_display import attention_shades, percent, probability_color, visible
from engine.inspection.explain import Explanation, Token, WordOrder, suggest_heads

CHIP_COLORS = ("#ffd8a8", "#c3e6ff", "#d3f9d8", "#f3d9fa", "#fff3bf", "#ffe3e3")
NARROW = 560  # below this width a page stacks its side-by-side parts
TOP_ATTENDED = 5  # the attention step lists this many tokens with bars, and sums up the rest


class FlowBox(QWidget):
    """Widgets left to right, wrapping to the next line when the width runs out; one wider than the whole
    line gets the line's width (a tile of a long word wraps its own tokens the same way). It places its
    children itself and answers `heightForWidth`, so the layout around it gives it the lines it needs."""

    def __init__(self, gap: int = 4, objectName: str = "") -> None:  # noqa: N803 (Qt's keyword)
        super().__init__(objectName=objectName)
        self.gap = gap
        self.widgets: list[QWidget] = []
        policy = QSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        policy.setHeightForWidth(True)
        self.setSizePolicy(policy)

    def add(self, widget: QWidget) -> None:
        widget.setParent(self)
        self.widgets.append(widget)
        widget.show()
        self.updateGeometry()
        self._arrange(self.width(), move=True)

    def hasHeightForWidth(self) -> bool:  # noqa: N802 (Qt override)
        return True

    def heightForWidth(self, width: int) -> int:  # noqa: N802 (Qt override)
        return self._arrange(width, move=False)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt override)
        """Everything on one line."""
        hints = [w.sizeHint() for w in self.widgets if not w.isHidden()]
        width = sum(h.width() for h in hints) + self.gap * max(0, len(hints) - 1)
        return QSize(width, max((h.height() for h in hints), default=0))

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt override)
        """The widest child's minimum: everything else can wrap."""
        size = QSize(0, 0)
        for w in self.widgets:
            if not w.isHidden():
                size = size.expandedTo(w.minimumSizeHint())
        return QSize(size.width(), self.heightForWidth(max(size.width(), self.width())))

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.LayoutRequest:  # a child's size hint changed
            self.updateGeometry()
            self._arrange(self.width(), move=True)
        return super().event(event)

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 (Qt override)
        super().resizeEvent(event)
        self._arrange(event.size().width(), move=True)

    def _arrange(self, width: int, move: bool) -> int:
        """Place the children in ``width`` (only measure unless ``move``); the height they take."""
        x = y = line = 0
        for w in self.widgets:
            if w.isHidden():
                continue
            cell = max(min(w.sizeHint().width(), width), w.minimumSizeHint().width())
            height = w.heightForWidth(cell) if w.hasHeightForWidth() else w.sizeHint().height()
            if x > 0 and x + cell > width:
                x, y, line = 0, y + line + self.gap, 0
            if move:
                w.setGeometry(x, y, cell, height)
            x += cell + self.gap
            line = max(line, height)
        return y + line


def word_groups(tokens: list[Token]) -> list[list[Token]]:
    """The tokens cut into words as the text shows them: a word starts after whitespace (a token that
    starts with a space or newline, or follows one that ends with it) and at a special token, so the
    pieces of a word (·Pyth + on, reverse + _ + string) stay together."""
    groups: list[list[Token]] = []
    for t in tokens:
        prev = groups[-1][-1] if groups else None
        starts = prev is None or t.special or prev.special or t.piece[:1].isspace() or prev.piece[-1:].isspace()
        if starts:
            groups.append([t])
        else:
            groups[-1].append(t)
    return groups


class SideBySide(QBoxLayout):
    """Two parts side by side from `NARROW` pixels up, one above the other below (`Step` switches it)."""

    def __init__(self, first: QWidget, second: QWidget, stretch: tuple[int, int]) -> None:
        super().__init__(QBoxLayout.Direction.LeftToRight)
        self.addWidget(first, stretch[0])
        self.addWidget(second, stretch[1])

    def fit(self, width: int) -> None:
        narrow = width < NARROW
        self.setDirection(QBoxLayout.Direction.TopToBottom if narrow else QBoxLayout.Direction.LeftToRight)


def esc(piece: str) -> str:
    return html.escape(visible(piece))


def table_item(text: str, logprob: float | None = None) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    if logprob is not None:
        item.setBackground(QColor(probability_color(logprob)))
        item.setForeground(QColor("#111111"))
    return item


class Step(QWidget):
    title = ""
    caption = ""

    def show_explanation(self, e: Explanation) -> None:
        raise NotImplementedError

    def changeEvent(self, event: QEvent) -> None:  # noqa: N802 (Qt override)
        super().changeEvent(event)
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange):  # new theme
            self.restyle()

    def restyle(self) -> None:
        for plot in self.findChildren(pg.PlotWidget):
            styled(plot)

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 (Qt override)
        super().resizeEvent(event)
        for split in self.findChildren(SideBySide):
            split.fit(event.size().width())


class TokensStep(Step):
    title = "Tokens"
    caption = (
        "A model cannot read letters. First the text is cut into <b>tokens</b>: whole words, pieces of "
        "words or punctuation. Each token has a number, its <b>id</b>, in the model's vocabulary, and "
        "from here on the model only sees those numbers. Common words are one token; rare words are "
        "split into pieces. A space usually belongs to the token after it (shown as ·)."
    )

    def __init__(self) -> None:
        super().__init__()
        self.view = QScrollArea(widgetResizable=True)
        self.view.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # tiles wrap instead
        self.tiles = self._new_tiles()
        self.key = QLabel(
            "Each tile is a word of your text; each coloured cell in it is one token. Top: the token's text. "
            "Bottom: its id, the number the model gets.",
            wordWrap=True,
        )
        self.notes = QLabel(wordWrap=True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.key)
        layout.addWidget(self.notes)

    def _new_tiles(self) -> FlowBox:
        """An empty box for the tiles; the scroll area deletes the one before, tiles and all."""
        tiles = FlowBox(gap=6)
        tiles.setAccessibleName("The text as tokens")
        self.view.setWidget(tiles)
        return tiles

    def word_tiles(self) -> list[FlowBox]:
        return list(self.tiles.widgets)

    def show_explanation(self, e: Explanation) -> None:
        self.tiles = self._new_tiles()
        i = 0
        for group in word_groups(e.tokens):
            tile = FlowBox(gap=1, objectName="wordTile")  # a hairline between tokens; a long word wraps
            tile.setProperty("word", "".join(visible(t.piece) for t in group))
            for t in group:
                bg = "#dddddd" if t.special else CHIP_COLORS[i % len(CHIP_COLORS)]
                label = f"<i>{esc(t.piece)}</i>" if t.special else esc(t.piece)
                cell = QLabel(
                    f"<span style='font-size:large'>{label}</span><br>"
                    f"<span style='color:#555555;font-size:small'>{t.id}</span>",
                    alignment=Qt.AlignmentFlag.AlignCenter,
                )
                cell.setProperty("piece", visible(t.piece))
                cell.setStyleSheet(f"background-color:{bg};color:#111111;padding:3px")
                cell.setToolTip(f"token {i}: “{html.escape(visible(t.piece))}”, id {t.id}")
                tile.add(cell)
                i += 1
            self.tiles.add(tile)
        words, current = [], []
        for t in e.tokens:
            if t.continues_word and current:
                current.append(t.piece)
            else:
                if len(current) > 1:
                    words.append(current)
                current = [t.piece]
        if len(current) > 1:
            words.append(current)
        n_special = sum(t.special for t in e.tokens)
        parts = [f"<b>{len(e.tokens)}</b> tokens."]
        if words:
            split = "; ".join(" + ".join(f"“{html.escape(p.strip())}”" for p in w) for w in words[:4])
            parts.append(f"Words split into pieces: {split}.")
        else:
            parts.append("Every word here is a single token; try a rare word such as “unbelievably” to see one split.")
        if n_special:
            parts.append(f"{n_special} <i>special</i> token(s) (grey) mark structure, such as where a message starts.")
        self.notes.setText(" ".join(parts))


class EmbeddingsStep(Step):
    title = "Embeddings"
    caption = (
        "Each token id picks a row of numbers, its <b>embedding</b>: a point in a space with hundreds of "
        "directions. Training puts tokens that are used alike close together. Left: the tokens whose "
        "embedding points most the same way as the chosen one (1.0 would be identical). Right: your "
        "tokens (orange) and some neighbours (grey) flattened to 2-D, so nearby points are related words."
    )

    def __init__(self) -> None:
        super().__init__()
        self.token = QComboBox(accessibleName="Token whose neighbours to show")
        self.table = QTableWidget(accessibleName="Nearest neighbours", columnCount=2)
        self.table.setHorizontalHeaderLabels(["Neighbour", "Similarity"])
        self.table.verticalHeader().setVisible(False)
        self.plot = pg.PlotWidget()
        self.plot.setAccessibleName("Tokens in two dimensions")
        self.plot.hideAxis("left")
        self.plot.hideAxis("bottom")
        self.plot.getViewBox().setDefaultPadding(0.12)  # room for the labels right of the points
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(QLabel("Token:"))
        ll.addWidget(self.token)
        ll.addWidget(self.table, 1)
        split = SideBySide(left, self.plot, (1, 2))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(split, 1)
        self.token.currentIndexChanged.connect(self._show_neighbours)
        self.e: Explanation | None = None

    def show_explanation(self, e: Explanation) -> None:
        self.e = e
        self.token.blockSignals(True)
        self.token.clear()
        for t in dict.fromkeys(e.neighbours):
            self.token.addItem(visible(next(x.piece for x in e.tokens if x.id == t)), t)
        self.token.blockSignals(False)
        # Start on the longest word: more interesting neighbours than "the".
        lengths = [len(self.token.itemText(i).strip("·")) for i in range(self.token.count())]
        self.token.setCurrentIndex(int(np.argmax(lengths)) if lengths else -1)
        self._show_neighbours()
        self._show_map()

    @Slot()
    def _show_neighbours(self, *_args) -> None:
        if self.e is None or self.token.currentData() is None:
            self.table.setRowCount(0)
            return
        rows = self.e.neighbours[self.token.currentData()]
        self.table.setRowCount(len(rows))
        for r, n in enumerate(rows):
            self.table.setItem(r, 0, table_item(visible(n.text)))
            bar = "█" * max(1, round(n.similarity * 10))
            item = table_item(f"{n.similarity:.2f} {bar}")
            item.setForeground(QColor(ORANGE))
            self.table.setItem(r, 1, item)
        self.table.resizeColumnsToContents()

    def restyle(self) -> None:
        if getattr(self, "e", None) is not None:  # a palette change can come before the first walk
            self._show_map()

    def _show_map(self) -> None:
        styled(self.plot)
        self.plot.clear()
        points = self.e.map_points
        if not points:
            return
        text = QApplication.palette().color(QPalette.ColorRole.Text)
        for group, color, size in ((False, GREY, 7), (True, ORANGE, 11)):
            pts = [p for p in points if p.in_prompt == group]
            self.plot.addItem(
                pg.ScatterPlotItem([p.x for p in pts], [p.y for p in pts], size=size, brush=color, pen=None)
            )
            for p in pts:
                label = pg.TextItem(visible(p.text).strip("·") or visible(p.text), color=text if group else GREY)
                label.setPos(p.x, p.y)
                self.plot.addItem(label)


class PositionsStep(Step):
    title = "Positions"
    caption = (
        "Word order matters: “cats chase mice” is not “mice chase cats”. Embeddings alone do not say "
        "where a token stands, so the model adds its position."
    )
    compareRequested = Signal(str, str)

    def __init__(self) -> None:
        super().__init__()
        self.how = QLabel(wordWrap=True)
        self.plot = pg.PlotWidget()
        self.plot.setAccessibleName("How positions are encoded")
        self.plot.setMinimumHeight(150)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image.setColorMap(pg.colormap.get("CET-D1"))
        self.plot.addItem(self.image)
        self.plot.invertY(True)
        self.original = QLineEdit(readOnly=True, accessibleName="Original order")
        self.swapped = QLineEdit(accessibleName="Other order")
        self.compare = QPushButton("Compare", accessibleName="Compare word orders")
        self.result = QTableWidget(accessibleName="Predictions for both orders", columnCount=2)
        self.result.setHorizontalHeaderLabels(["Original order", "Other order"])
        self.result.setToolTip("The likeliest next tokens after the original order (left) and the other (right)")
        self.result.verticalHeader().setVisible(False)
        self.result.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.result.verticalHeader().setDefaultSectionSize(24)
        self.result.setMinimumHeight(6 * 24 + 4)
        self.difference = QLabel(wordWrap=True)
        form = QGridLayout()
        form.addWidget(QLabel("Original:"), 0, 0)
        form.addWidget(self.original, 0, 1)
        form.addWidget(QLabel("Reordered:"), 1, 0)
        form.addWidget(self.swapped, 1, 1)
        form.addWidget(self.compare, 1, 2)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.how)
        layout.addWidget(self.plot, 2)
        layout.addWidget(
            QLabel(
                "<b>Try it:</b> the same words in another order (edit the second line and press Compare)",
                wordWrap=True,
            )
        )
        layout.addLayout(form)
        layout.addWidget(self.result, 3)
        layout.addWidget(self.difference)
        self.compare.clicked.connect(lambda: self.compareRequested.emit(self.original.text(), self.swapped.text()))

    def show_explanation(self, e: Explanation) -> None:
        styled(self.plot)
        pieces = [visible(t.piece) for t in e.tokens]
        if e.positions["kind"] == "rotary":
            angles = e.positions["angles"]
            n = angles.shape[1]
            angles = angles[:, :16]  # the slower hands have barely moved over a short text
            self.how.setText(
                "This model <b>rotates</b> each token's vectors by angles that grow with its position, like "
                f"{n} clock hands turning at different speeds (the 16 fastest shown, left to right). Colour is "
                "where a hand points: <span style='color:#c0392b'><b>red</b></span> up, "
                "<span style='color:#2e6fd8'><b>blue</b></span> down. Comparing hands tells two tokens how far "
                "apart they stand."
            )
            data = np.cos(angles.numpy())
            self.plot.setLabel("bottom", "clock hand (fast → slow)")
        else:
            vectors = e.positions["vectors"]
            self.how.setText(
                "This model <b>adds a learned position vector</b> to each token's embedding: one row of "
                "numbers per position, learned in training. Rows are your tokens' positions; columns are "
                f"the first {min(64, vectors.shape[1])} of its {vectors.shape[1]} numbers."
            )
            data = vectors[:, :64].numpy()
            self.plot.setLabel("bottom", "number in the position vector")
        peak = float(np.abs(data).max()) or 1.0
        self.image.setImage(data, levels=(-peak, peak))
        self.plot.setLabel("left", "position (token)")
        step = max(1, len(pieces) // 12)
        self.plot.getAxis("left").setTicks([[(i + 0.5, f"{i} {pieces[i][:8]}") for i in range(0, len(pieces), step)]])
        if e.word_order is not None:
            self.show_word_order(e.word_order)
        else:
            self.result.setRowCount(0)
            self.difference.setText("Write a prompt of at least two words to compare orders.")

    def show_word_order(self, w: WordOrder) -> None:
        self.original.setText(w.text)
        self.swapped.setText(w.swapped_text)
        self.result.setRowCount(max(len(w.top), len(w.swapped_top)))
        for col, cands in enumerate((w.top, w.swapped_top)):
            for r, c in enumerate(cands):
                self.result.setItem(r, col, table_item(f"{visible(c.text)}  {percent(c.logprob)}", c.logprob))
        self.difference.setText(
            f"The two predictions differ by <b>{w.difference * 100:.0f}%</b> of their probability "
            "(0% would mean order made no difference)."
        )


class AttentionStep(Step):
    title = "Attention"
    caption = (
        "In <b>self-attention</b> each token looks back at the tokens before it and takes in some of "
        "each, so “it” can borrow meaning from “the dog”. The model does this many times in parallel "
        "(<b>heads</b>) in every <b>layer</b>, each head looking for something different. Pick a token, "
        "a layer and a head; orange shows where that token looks. The suggested heads look strongly "
        "at earlier words."
    )

    def __init__(self) -> None:
        super().__init__()
        self.token = QComboBox(accessibleName="Attending token")
        self.layer = QSpinBox(accessibleName="Layer")
        self.head = QSpinBox(accessibleName="Head")
        self.suggestions = QListWidget(accessibleName="Suggested heads")
        self.view = QTextBrowser(accessibleName="Where the token looks")
        self.view.setMinimumHeight(280)  # the text and the top tokens, stacked over the heads when narrow
        self.token.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.token.setMinimumContentsLength(10)
        row = FlowBox(gap=12)
        for label, w in (("Token", self.token), ("Layer", self.layer), ("Head", self.head)):
            pair = QWidget()
            pl = QHBoxLayout(pair)
            pl.setContentsMargins(0, 0, 0, 0)
            pl.addWidget(QLabel(label))
            pl.addWidget(w)
            row.add(pair)
        side = QWidget()
        sl = QVBoxLayout(side)
        sl.setContentsMargins(0, 0, 0, 0)
        sl.addWidget(
            QLabel(
                "Suggested heads: share of attention on earlier words, not counting the one just before (click one)",
                wordWrap=True,
            )
        )
        sl.addWidget(self.suggestions, 1)
        split = SideBySide(self.view, side, (2, 1))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(row)
        layout.addLayout(split, 1)
        self.e: Explanation | None = None
        self.token.currentIndexChanged.connect(self._on_token)
        self.layer.valueChanged.connect(self._render)
        self.head.valueChanged.connect(self._render)
        self.suggestions.currentItemChanged.connect(self._on_suggestion)

    def show_explanation(self, e: Explanation) -> None:
        self.e = e
        first = e.inspection.attention[min(e.inspection.attention)]
        self.layer.setRange(0, max(e.inspection.attention))
        self.head.setRange(0, first.shape[0] - 1)
        self.token.blockSignals(True)
        self.token.clear()
        for i, t in enumerate(e.tokens):
            self.token.addItem(f"#{i} {visible(t.piece)}", i)
        self.token.blockSignals(False)
        self.token.setCurrentIndex(len(e.tokens) - 1)  # the last token: the one that predicts the next
        self._on_token()

    @Slot()
    def _on_token(self, *_args) -> None:
        if self.e is None:
            return
        position = self.token.currentData()
        self.suggestions.blockSignals(True)
        self.suggestions.clear()
        for layer, head, share in suggest_heads(self.e.inspection.attention, position):
            item = QListWidgetItem(f"layer {layer} · head {head}: {share * 100:.0f}%")
            item.setData(Qt.ItemDataRole.UserRole, (layer, head))
            self.suggestions.addItem(item)
        self.suggestions.blockSignals(False)
        if self.suggestions.count():
            self.suggestions.setCurrentRow(0)
        else:
            self._render()

    @Slot()
    def _on_suggestion(self, item: QListWidgetItem | None, _previous=None) -> None:
        if item is None:
            return
        layer, head = item.data(Qt.ItemDataRole.UserRole)
        self.layer.blockSignals(True)
        self.layer.setValue(layer)
        self.layer.blockSignals(False)
        self.head.setValue(head)
        self._render()

    @Slot()
    def _render(self, *_args) -> None:
        e = self.e
        if e is None or self.layer.value() not in e.inspection.attention:
            return
        position = self.token.currentData()
        row = e.inspection.attention[self.layer.value()][self.head.value(), position].float()
        shades = attention_shades(row, position)
        parts = []
        for p, (t, alpha) in enumerate(zip(e.tokens, shades, strict=True)):
            label = html.escape(t.piece)  # the text as written (pre-wrap): the tokens glue into words
            if p == position:
                label = f"<b><u>{label}</u></b>"
            parts.append(f"<span style='background-color:rgba(255,110,30,{alpha:.2f})'>{label}</span>")
        self.view.setHtml(
            f"<p>Where <b>{esc(e.tokens[position].piece)}</b> looks in layer {self.layer.value()}, head "
            f"{self.head.value()}, most:</p>"
            + top_attended_html(e.tokens, row, position)
            + "<p>In the text (stronger orange: more attention; later tokens are hidden from it):</p>"
            f"<p style='font-size:large;line-height:160%;white-space:pre-wrap'>{''.join(parts)}</p>"
            "<p style='color:#777777'>Many heads park spare attention on the first token; the colour "
            "scale leaves it out.</p>"
        )


def share(p: float) -> str:
    """A share of attention: one decimal, so small shares do not all read 0%."""
    return f"{p * 100:.1f}%" if p >= 0.0005 else "<0.1%"


def top_attended_html(tokens: list[Token], row: torch.Tensor, position: int) -> str:
    """The `TOP_ATTENDED` tokens ``position`` looks at most, each with a bar and its share, and one line
    for all the others together."""
    seen = row[: position + 1]
    order = sorted(range(position + 1), key=lambda p: -float(seen[p]))
    top, rest = order[:TOP_ATTENDED], order[TOP_ATTENDED:]
    peak = max(float(seen[top[0]]), 1e-6)
    lines = "".join(
        f"<tr><td>#{p}&nbsp;<b>{esc(tokens[p].piece)}</b></td>"
        f"<td><span style='color:{ORANGE}'>{'█' * max(1, round(float(seen[p]) / peak * 8))}</span></td>"
        f"<td align='right'>{share(float(seen[p]))}</td></tr>"
        for p in top
    )
    others = (
        f"<tr><td colspan='3' style='color:#777777'>{len(rest)} other tokens: "
        f"{share(float(seen[rest].sum()))} together</td></tr>"
        if rest
        else ""
    )
    return f"<table cellspacing='2'>{lines}{others}</table>"


class LayersStep(Step):
    title = "Layers"
    caption = (
        "The model is a stack of <b>layers</b>; each one adds to a running picture of the text. We can "
        "peek at each layer's picture and ask “if the model stopped here, what would it say next?” "
        "(the <i>logit lens</i>). Early layers guess vaguely; the later ones sharpen towards the final "
        "answer. The chart shows how sure each layer is of the final choice."
    )

    def __init__(self) -> None:
        super().__init__()
        self.table = QTableWidget(accessibleName="What each layer predicts", columnCount=3)
        self.table.setHorizontalHeaderLabels(["1st guess", "2nd", "3rd"])
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)  # narrow: it scrolls sideways, nothing elided
        self.plot = pg.PlotWidget()
        self.plot.setAccessibleName("How sure each layer is")
        self.plot.setLabel("bottom", "layer")
        self.plot.setLabel("left", "how sure of the final answer (%)")
        split = SideBySide(self.table, self.plot, (2, 1))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.heading = QLabel(wordWrap=True)
        layout.addWidget(self.heading)
        layout.addLayout(split, 1)

    def show_explanation(self, e: Explanation) -> None:
        last = e.lens[-1][0] if e.lens and e.lens[-1] else None
        self.heading.setText(
            f"After <b>{esc(e.tokens[-1].piece)}</b>, the last token, layer by layer"
            + (f" (the final answer: <b>{esc(last.text)}</b>):" if last else ":")
        )
        self.table.setRowCount(len(e.lens))
        self.table.setVerticalHeaderLabels([f"layer {i}" for i in range(len(e.lens))])
        for r, row in enumerate(e.lens):
            for c in range(3):
                if c < len(row):
                    self.table.setItem(
                        r, c, table_item(f"{visible(row[c].text)}  {percent(row[c].logprob)}", row[c].logprob)
                    )
        self.table.scrollToBottom()
        styled(self.plot)
        self.plot.clear()
        percents = [p * 100 for p in e.sharpening]
        self.plot.plot(
            list(range(len(percents))), percents, pen=pg.mkPen(ORANGE, width=2), symbol="o", symbolBrush=ORANGE
        )
        self.plot.setYRange(0, 100)

    def showEvent(self, event) -> None:  # noqa: N802 (Qt override)
        super().showEvent(event)
        self.table.scrollToBottom()  # the last layers, where the answer forms (needs the table laid out)


class NextTokenStep(Step):
    title = "Next token"
    caption = (
        "At the end the model gives every token in its vocabulary a probability of coming next. It does "
        "not have to take the top one: <b>sampling</b> picks one at random, after steps that reshape the "
        "odds. Pick a step to see its effect: grey is before, orange after. Then generate one token: it is "
        "added to the text and the whole walk runs again, which is all that writing a reply is."
    )
    generateRequested = Signal()

    EXPLAIN = {
        "model": "The model's own probabilities for the next token.",
        "penalties": "Penalties lower tokens that already appeared, against repetition.",
        "greedy": "Temperature 0 (greedy): only the most likely token is kept.",
        "temperature": "Temperature {v}: below 1 makes likely tokens likelier (safer); above 1 evens the odds out.",
        "top-k": "Top-k {v}: only the {v} most likely tokens stay in the draw.",
        "top-p": "Top-p {v}: keep the fewest top tokens whose probabilities add up to {v}.",
        "min-p": "Min-p {v}: drop tokens less than {v}× as likely as the top one.",
        "typical-p": "Typical-p {v}: keep tokens about as surprising as usual.",
    }

    def __init__(self) -> None:
        super().__init__()
        self.steps = QListWidget(accessibleName="Sampler steps")
        self.steps.setMaximumWidth(240)
        self.plot = pg.PlotWidget()
        self.plot.setAccessibleName("Probabilities before and after the step")
        self.plot.invertY(True)
        self.plot.setLabel("bottom", "probability (%)")
        self.plot.getAxis("bottom").enableAutoSIPrefix(False)
        self.note = QLabel(wordWrap=True)
        self.generate = QPushButton("Generate one token", accessibleName="Generate one token")
        self.picked = QLabel(wordWrap=True)
        split = SideBySide(self.steps, self.plot, (1, 2))
        bottom = QHBoxLayout()
        bottom.addWidget(self.generate)
        bottom.addWidget(self.picked, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(split, 1)
        layout.addWidget(self.note)
        layout.addLayout(bottom)
        self.e: Explanation | None = None
        self.steps.currentRowChanged.connect(self._render)
        self.generate.clicked.connect(self.generateRequested)

    def show_explanation(self, e: Explanation) -> None:
        self.e = e
        self.steps.blockSignals(True)
        self.steps.clear()
        self.steps.addItem("1. the model's odds")
        for i, s in enumerate(e.steps):
            self.steps.addItem(f"{i + 2}. {s.name} {s.setting}")
        self.steps.blockSignals(False)
        self.steps.setMaximumHeight(
            self.steps.sizeHintForRow(0) * (self.steps.count() + 1) + 2 * self.steps.frameWidth()
        )
        self.steps.setCurrentRow(0)
        self._render(0)
        self.picked.setText(
            f"This time the sampler picked <b>{esc(e.sampled_text)}</b>. Press the button to add it to the text."
        )

    @Slot(int)
    def _render(self, row: int) -> None:
        e = self.e
        if e is None or row < 0 or not e.steps:
            return
        styled(self.plot)
        self.plot.clear()
        if row == 0:
            before, after, name, setting = None, e.steps[0].before, "model", ""
            kept = f"All {e.steps[0].kept_before:,} tokens are possible; the 10 likeliest are shown."
        else:
            s = e.steps[row - 1]
            before, after, name, setting = s.before, s.after, s.name, s.setting
            kept = f"Tokens still possible: {s.kept_before:,} before, <b>{s.kept_after:,}</b> after."
        n = len(after)
        y = np.arange(n, dtype=float)
        if before is not None:
            bp = [math.exp(c.logprob) * 100 for c in before]
            self.plot.addItem(pg.BarGraphItem(x0=0, y=y - 0.2, height=0.38, width=bp, brush=GREY, pen=None))
        ap = [math.exp(c.logprob) * 100 if c.logprob > float("-inf") else 0.0 for c in after]
        offset = 0.2 if before is not None else 0.0
        self.plot.addItem(
            pg.BarGraphItem(x0=0, y=y + offset, height=0.38 if before else 0.7, width=ap, brush=ORANGE, pen=None)
        )
        labels = [
            f"{visible(c.text)[:12]} {percent(c.logprob) if c.logprob > float('-inf') else 'dropped'}" for c in after
        ]
        self.plot.getAxis("left").setTicks([[(i, labels[i]) for i in range(n)]])
        self.plot.setXRange(0, max([*ap, *(bp if before is not None else [])], default=1) * 1.05)
        self.note.setText(self.EXPLAIN.get(name, name).format(v=setting) + " " + kept)
