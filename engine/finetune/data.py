"""Training data from the user's files: read, chunk at sensible boundaries, split, and report.

Every file gets a `FileReport`: what was read (tokens, chunks) or why it was skipped. A file that
cannot be used (encrypted PDF, binary data named ``.txt``, over the size cap, bad JSON) is skipped
with a reason and the rest go on.

An `Example` is a list of token ids with a parallel loss mask (1 where the token is a target). Plain
text trains on every token; chat records (``{"messages": [...]}`` in ``.jsonl``) are rendered with the
model's chat template and train only on the assistant turns.
"""

from __future__ import annotations

import html.parser
import json
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.finetune.facts import facts
from engine.finetune.lessons import lessons as fact_lessons
from engine.finetune.probes import Probe, build_probes
from engine.text.tokenizer import Tokenizer

TEXT_SUFFIXES = frozenset(
    ".txt .md .markdown .rst .org .tex .csv .tsv .log .ini .cfg .toml .yaml .yml .json .xml "
    ".py .pyi .js .jsx .ts .tsx .c .h .cc .cpp .hpp .cs .java .kt .go .rs .rb .php .swift .scala .lua "
    ".r .jl .m .sh .bash .zsh .ps1 .sql .css .scss .vue .svelte .ipynb .el .hs .ml .ex .exs .dart".split()
)
HTML_SUFFIXES = frozenset({".html", ".htm", ".xhtml"})
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | {".pdf", ".docx", ".jsonl"}
MAX_FILE_BYTES = 50 * 1024 * 1024
PROBE_DOCUMENTS = 200


@dataclass
class FileReport:
    path: str
    tokens: int = 0
    chunks: int = 0
    skipped: str | None = None  # the reason, when nothing of the file was used
    notes: list[str] = field(default_factory=list)  # partial problems (bad JSONL lines, truncated chats)


@dataclass
class Example:
    ids: list[int]
    mask: list[int]  # 1: predict this token (loss), 0: context only

    @property
    def n_targets(self) -> int:
        return sum(self.mask[1:])


@dataclass
class Dataset:
    train: list[Example]
    val: list[Example]
    reports: list[FileReport]
    seq_len: int
    probes: list[Probe] = field(default_factory=list)  # recall questions from the files' facts
    prose_tokens: int = 0  # tokens of plain text, before any questions were made from it
    prose_chunks: int = 0  # the chunks that text alone makes (packed like the rest)

    @property
    def train_tokens(self) -> int:
        return sum(len(e.ids) for e in self.train)

    def summary(self) -> str:
        used = [r for r in self.reports if r.skipped is None]
        skipped = [r for r in self.reports if r.skipped is not None]
        return (
            f"{len(used)} files read, {len(skipped)} skipped; {len(self.train)} training and "
            f"{len(self.val)} validation chunks of up to {self.seq_len} tokens"
        )


class SkipFile(Exception):
    """Raised by a reader: the file is not used, for the reason given."""


# ---------------------------------------------------------------- readers: path -> list of documents


class _HTMLText(html.parser.HTMLParser):
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "pre"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "noscript", "template"):
            self._skip += 1
        elif tag in self.BLOCK:
            self.parts.append("\n\n" if tag != "br" else "\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "noscript", "template"):
            self._skip = max(0, self._skip - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _decode(data: bytes) -> str:
    if b"\x00" in data[:65536]:
        raise SkipFile("binary data (NUL bytes), not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        if text.count("\ufffd") > max(8, len(text) // 100):
            raise SkipFile("not UTF-8 text (binary or another encoding)") from None
        return text


def _read_pdf(path: Path) -> str:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise SkipFile("reading PDFs needs the pypdf package") from None
    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            try:
                ok = reader.decrypt("")
            except Exception:
                ok = 0
            if not ok:
                raise SkipFile("encrypted PDF (needs a password)")
        pages = [page.extract_text() or "" for page in reader.pages]
    except SkipFile:
        raise
    except (PdfReadError, Exception) as e:  # pypdf raises many kinds on damaged files
        raise SkipFile(f"unreadable PDF: {type(e).__name__}: {e}") from None
    if pages and not any(p.strip() for p in pages):
        n = len(pages)
        raise SkipFile(f"no text in its {n} page{'s' * (n != 1)} (scanned pictures? only a PDF's text layer is read)")
    return "\n\n".join(pages)


def _read_docx(path: Path) -> str:
    try:
        import docx
    except ImportError:
        raise SkipFile("reading .docx needs the python-docx package") from None
    try:
        document = docx.Document(str(path))
    except Exception as e:  # zipfile, lxml and python-docx errors alike
        raise SkipFile(f"unreadable .docx: {type(e).__name__}: {e}") from None
    parts = [p.text for p in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            parts.append("\t".join(cell.text for cell in row.cells))
    return "\n\n".join(parts)


@dataclass
class _Doc:
    text: str | None = None  # plain text
    messages: list[dict[str, str]] | None = None  # a chat


def _read_jsonl(data: bytes, report: FileReport) -> list[_Doc]:
    docs, bad = [], 0
    for n, line in enumerate(_decode(data).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            if bad <= 3:
                report.notes.append(f"line {n}: not JSON")
            continue
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            docs.append(_Doc(text=record["text"]))
        elif isinstance(record, dict) and _valid_messages(record.get("messages")):
            docs.append(_Doc(messages=[{"role": m["role"], "content": m["content"]} for m in record["messages"]]))
        else:
            bad += 1
            if bad <= 3:
                report.notes.append(f'line {n}: neither {{"text": ...}} nor {{"messages": [...]}}')
    if bad > 3:
        report.notes.append(f"{bad} lines skipped in all")
    if not docs:
        raise SkipFile('no usable records (expected {"text": ...} or {"messages": [...]} per line)')
    return docs


def _valid_messages(messages) -> bool:
    return (
        isinstance(messages, list)
        and bool(messages)
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
        and any(m["role"] == "assistant" for m in messages)
    )


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def read_file(path: Path, report: FileReport, max_bytes: int = MAX_FILE_BYTES) -> list[_Doc]:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise SkipFile(f"unsupported file type {suffix or '(no extension)'}")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise SkipFile(f"cannot read: {e.strerror or e}") from None
    if size > max_bytes:
        raise SkipFile(f"too large ({_size(size)}; the limit is {_size(max_bytes)})")
    if size == 0:
        raise SkipFile("empty file")
    if suffix == ".pdf":
        return [_Doc(text=_read_pdf(path))]
    if suffix == ".docx":
        return [_Doc(text=_read_docx(path))]
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SkipFile(f"cannot read: {e.strerror or e}") from None
    if suffix == ".jsonl":
        return _read_jsonl(data, report)
    text = _decode(data)
    if suffix in HTML_SUFFIXES:
        parser = _HTMLText()
        parser.feed(text)
        parser.close()
        text = "".join(parser.parts)
    return [_Doc(text=text)]


def collect_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[FileReport]]:
    """The files named or found (recursively, hidden entries left out) under the paths, sorted per folder."""
    files, missing = [], []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p).parts
                if f.is_file() and not any(part.startswith(".") for part in rel):
                    files.append(f)
        elif p.is_file():
            files.append(p)
        else:
            missing.append(FileReport(str(p), skipped="no such file or folder"))
    return files, missing


# ---------------------------------------------------------------- chunking


def _boundary_scores(text: str, offsets: Sequence[tuple[int, int]]) -> list[int]:
    """For each token, how good a place it is to start a chunk: 3 after a blank line, 2 after a line
    break, 1 after the end of a sentence, 0 elsewhere."""
    scores = []
    for start, end in offsets:
        piece = text[start:end]
        body = piece.lstrip()
        if not body:  # a whitespace token is never where a chunk should start
            scores.append(0)
            continue
        p = start + len(piece) - len(body)  # where the token's visible text begins
        before = text[max(0, p - 4) : p]
        stripped = before.rstrip(" \t")
        if p == 0 or stripped.endswith("\n\n"):
            scores.append(3)
        elif stripped.endswith("\n"):
            scores.append(2)
        elif before[-1:].isspace() and stripped[-1:] in (".", "!", "?", ":", ";"):
            scores.append(1)
        else:
            scores.append(0)
    return scores


def chunk_tokens(ids: list[int], scores: list[int], length: int, overlap: int) -> list[tuple[int, int]]:
    """Token ranges ``[start, end)`` of at most ``length`` tokens covering ``ids``. A chunk ends at the
    best boundary in its second half (paragraph > line > sentence > anywhere); the next one starts up
    to ``overlap`` tokens earlier at a boundary, or right at the cut when no boundary is that close
    (a cut in the middle of text that has no boundaries overlaps by ``overlap`` tokens)."""
    n, spans, start = len(ids), [], 0
    overlap = max(0, min(overlap, length // 2))
    while True:
        end = start + length
        if end >= n:
            spans.append((start, n))
            return spans
        lo = start + length // 2
        best = max(range(lo + 1, end + 1), key=lambda j: (scores[j] if j < n else 3, j))
        if scores[best] == 0:
            best = end
        spans.append((start, best))
        # Overlap only from a boundary: starting mid-word would teach the model broken text.
        good = [j for j in range(best - overlap, best) if scores[j] > 0] if scores[best] > 0 else []
        nxt = good[0] if good else (best if scores[best] > 0 or not overlap else best - overlap)
        start = max(nxt, start + 1)


def _text_examples(tokenizer: Tokenizer, text: str, seq_len: int, overlap: int, eos: int | None) -> list[Example]:
    enc = tokenizer.inner.encode(text, add_special_tokens=False)
    ids = list(enc.ids)
    bos = [tokenizer.bos_id] if tokenizer.add_bos and tokenizer.bos_id is not None else []
    room = seq_len + 1 - len(bos)  # an example of L+1 tokens gives L predictions
    scores = _boundary_scores(text, enc.offsets)
    if eos is not None:
        ids.append(eos)
        scores.append(0)
    out = []
    for a, b in chunk_tokens(ids, scores, room, overlap):
        chunk = bos + ids[a:b]
        out.append(Example(chunk, [0] * len(bos) + [1] * (b - a)))
    return out


def _chat_example(
    tokenizer: Tokenizer, render: Callable[..., str], messages: list[dict[str, str]], seq_len: int, report: FileReport
) -> Example | None:
    """One conversation through the template; targets are the tokens of assistant turns only."""
    ids: list[int] = []
    mask: list[int] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render(messages[:i], add_generation_prompt=True)
        full = render(messages[: i + 1], add_generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            report.notes.append("a chat whose template does not render turn by turn was trained on whole")
            ids = tokenizer.encode(full)
            return Example(ids[: seq_len + 1], [1] * min(len(ids), seq_len + 1))
        context = tokenizer.encode(prompt[len(done) :], add_bos=None if not done else False)
        reply = tokenizer.encode(full[len(prompt) :], add_bos=False)
        ids += context + reply
        mask += [0] * len(context) + [1] * len(reply)
        done = full
    if len(ids) > seq_len + 1:
        report.notes.append(f"a chat of {len(ids)} tokens was cut to {seq_len + 1}")
        ids, mask = ids[: seq_len + 1], mask[: seq_len + 1]
    return Example(ids, mask) if any(mask[1:]) else None


def _lesson_examples(
    tokenizer: Tokenizer, render: Callable[..., str], text: str, seq_len: int, report: FileReport, rng: random.Random
) -> list[Example]:
    chats = [chat for fact in facts(text) for chat in fact_lessons(fact, rng)]
    out = [e for e in (_chat_example(tokenizer, render, c, seq_len, report) for c in chats) if e is not None]
    if out:
        report.notes.append(f"{len(out)} questions and answers made from its facts")
    return out


def _pack(examples: list[Example], seq_len: int) -> list[Example]:
    """Join consecutive short examples (each already ends in EOS) into one of at most seq_len+1 tokens."""
    packed: list[Example] = []
    for e in examples:
        if packed and len(packed[-1].ids) + len(e.ids) <= seq_len + 1:
            packed[-1] = Example(packed[-1].ids + e.ids, packed[-1].mask + e.mask)
        else:
            packed.append(Example(list(e.ids), list(e.mask)))
    return packed


def build_dataset(
    paths: Iterable[str | Path],
    tokenizer: Tokenizer,
    render: Callable[..., str] | None = None,
    *,
    seq_len: int = 256,
    overlap: int = 32,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_file_bytes: int = MAX_FILE_BYTES,
    pack: bool = True,
    lessons: bool = False,
    probes: int = 0,
) -> Dataset:
    """Read, tokenize, chunk and split. ``render(messages, add_generation_prompt=...)`` renders chats
    (e.g. `LoadedModel.render_chat`); without it, chat records are skipped. With ``lessons`` (and
    ``render``), prose also becomes questions and answers about its facts (`engine.finetune.lessons`);
    ``probes`` recall questions are made from the first `PROBE_DOCUMENTS` texts (`engine.finetune.probes`)."""
    if seq_len < 8:
        raise ValueError(f"seq_len must be at least 8, got {seq_len}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    files, reports = collect_files(paths)
    eos = tokenizer.inner.token_to_id(tokenizer.eos_token) if tokenizer.eos_token else None
    if eos is None and tokenizer.eos_ids:
        eos = min(tokenizer.eos_ids)
    examples: list[Example] = []
    texts: list[tuple[str, str]] = []  # (file name, text) for the probes
    prose_examples: list[Example] = []
    for f in files:
        report = FileReport(str(f))
        reports.append(report)
        try:
            docs = read_file(f, report, max_file_bytes)
        except SkipFile as e:
            report.skipped = str(e)
            continue
        mine: list[Example] = []
        for doc in docs:
            if doc.messages is not None:
                if render is None:
                    report.notes.append("chat records need a chat template; skipped")
                    continue
                ex = _chat_example(tokenizer, render, doc.messages, seq_len, report)
                if ex is not None:
                    mine.append(ex)
            else:
                text = _normalise(doc.text or "")
                if text:
                    prose = _text_examples(tokenizer, text, seq_len, overlap, eos)
                    prose_examples += prose
                    mine += prose
                    if probes and len(texts) < PROBE_DOCUMENTS:
                        texts.append((f.name, text))
                if text and lessons and render is not None:
                    mine += _lesson_examples(tokenizer, render, text, seq_len, report, random.Random(seed))
        if not mine:
            report.skipped = "no text found"
            continue
        report.tokens = sum(len(e.ids) for e in mine)
        report.chunks = len(mine)
        examples += mine
    if pack:
        examples = _pack(examples, seq_len)
    examples = [e for e in examples if e.n_targets > 0]
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = round(len(examples) * val_fraction) if len(examples) > 1 else 0
    if val_fraction > 0 and n_val == 0 and len(examples) > 1:
        n_val = 1
    val = [examples[i] for i in sorted(order[:n_val])]
    train = [examples[i] for i in sorted(order[n_val:])]
    prose_tokens = sum(len(e.ids) for e in prose_examples)
    prose_chunks = len(_pack(prose_examples, seq_len) if pack else prose_examples)
    made = build_probes(texts, probes) if probes else []
    return Dataset(train, val, reports, seq_len, made, prose_tokens, prose_chunks)
