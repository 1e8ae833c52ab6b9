"""Reading the user's files for fine-tuning: formats, chunking, chat masks, and files skipped with reasons."""

from __future__ import annotations

import json

import pytest

from engine.finetune.data import build_dataset, chunk_tokens
from engine.loading.loader import load_model


@pytest.fixture(scope="module")
def lm():
    return load_model()  # the default model: a real BPE tokenizer and chat template


def _reports(ds):
    return {r.path.rsplit("/", 1)[-1]: r for r in ds.reports}


def _pdf(path, text, password=None):
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    page = writer.add_blank_page(width=300, height=200)
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})}
    )
    stream = DecodedStreamObject()
    stream.set_data(f"BT /F1 12 Tf 20 100 Td ({text}) Tj ET".encode())
    page[NameObject("/Contents")] = writer._add_object(stream)
    if password:
        writer.encrypt(password)
    with open(path, "wb") as f:
        writer.write(f)


def _scanned_pdf(path, pages=2):
    """A PDF whose pages are only pictures (grey pixels), as a scanner writes them: no text layer."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject, NumberObject

    writer = PdfWriter()
    for _ in range(pages):
        page = writer.add_blank_page(width=200, height=100)
        image = DecodedStreamObject()
        image.set_data(bytes([128]) * (20 * 10))
        image.update(
            {
                NameObject("/Type"): NameObject("/XObject"),
                NameObject("/Subtype"): NameObject("/Image"),
                NameObject("/Width"): NumberObject(20),
                NameObject("/Height"): NumberObject(10),
                NameObject("/ColorSpace"): NameObject("/DeviceGray"),
                NameObject("/BitsPerComponent"): NumberObject(8),
            }
        )
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/XObject"): DictionaryObject({NameObject("/Im0"): writer._add_object(image)})}
        )
        content = DecodedStreamObject()
        content.set_data(b"q 200 0 0 100 0 0 cm /Im0 Do Q")
        page[NameObject("/Contents")] = writer._add_object(content)
    with open(path, "wb") as f:
        writer.write(f)


def test_reads_every_format_and_skips_bad_files_with_reasons(lm, tmp_path):
    import docx

    (tmp_path / "notes.md").write_text("# Title\n\nThe heron nests by the mill.")
    (tmp_path / "page.html").write_text("<html><script>var x = 'no';</script><p>Lanterns line the quay.</p></html>")
    (tmp_path / "code.py").write_text("def f():\n    return 1\n")
    document = docx.Document()
    document.add_paragraph("The bridge opens at dawn.")
    document.save(tmp_path / "letter.docx")
    _pdf(tmp_path / "paper.pdf", "Glass beads from the river.")
    _pdf(tmp_path / "secret.pdf", "hidden", password="hunter2")
    _scanned_pdf(tmp_path / "scan.pdf")
    (tmp_path / "fake.txt").write_bytes(b"\x7fELF\x00\x01\x02" + bytes(range(256)) * 4)
    (tmp_path / "broken.docx").write_bytes(b"PK not really a zip")
    (tmp_path / "big.log").write_text("x" * 100_000)
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / ".hidden.txt").write_text("never read")
    records = [
        {"text": "Owls hunt at the edge of the orchard."},
        {"messages": [{"role": "user", "content": "Who keeps the mill?"}, {"role": "assistant", "content": "Ada."}]},
        "not a record",
    ]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n{broken\n")

    ds = build_dataset(
        [tmp_path, tmp_path / "missing"],
        lm.tokenizer,
        lm.render_chat,
        seq_len=64,
        val_fraction=0,
        max_file_bytes=64_000,
    )
    r = _reports(ds)
    for name in ("notes.md", "page.html", "code.py", "letter.docx", "paper.pdf", "data.jsonl"):
        assert r[name].skipped is None and r[name].tokens > 0 and r[name].chunks >= 1, name
    assert "encrypted" in r["secret.pdf"].skipped
    assert "no text in its 2 pages (scanned pictures?" in r["scan.pdf"].skipped
    assert "binary" in r["fake.txt"].skipped
    assert "unreadable .docx" in r["broken.docx"].skipped
    assert "too large" in r["big.log"].skipped
    assert "unsupported file type .png" in r["image.png"].skipped
    assert r["empty.txt"].skipped == "empty file"
    assert r["missing"].skipped == "no such file or folder"
    assert ".hidden.txt" not in r
    assert any("not JSON" in n for n in r["data.jsonl"].notes)
    text = "".join(lm.tokenizer.decode(e.ids) for e in ds.train)
    for phrase in ("heron", "Lanterns line the quay", "bridge opens", "Glass beads", "Owls hunt", "Ada."):
        assert phrase in text, phrase
    assert "var x" not in text
    assert lm.tokenizer.eos_token in text  # EOS between documents


def test_chat_records_train_only_on_assistant_turns(lm, tmp_path):
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of Zorblax?"},
            {"role": "assistant", "content": "Quendara."},
            {"role": "user", "content": "And its moons?"},
            {"role": "assistant", "content": "Tiko, Vessa and Plum."},
        ]
    }
    (tmp_path / "chat.jsonl").write_text(json.dumps(chat))
    ds = build_dataset([tmp_path], lm.tokenizer, lm.render_chat, seq_len=256, val_fraction=0)
    (ex,) = ds.train
    targets = lm.tokenizer.decode([i for i, m in zip(ex.ids, ex.mask, strict=True) if m])
    context = lm.tokenizer.decode([i for i, m in zip(ex.ids, ex.mask, strict=True) if not m])
    assert "Quendara." in targets and "Tiko, Vessa and Plum." in targets
    assert "Capital" not in targets and "Be brief" not in targets and "moons" not in targets
    assert "Capital of Zorblax?" in context
    assert lm.tokenizer.decode(ex.ids) == lm.render_chat(chat["messages"], add_generation_prompt=False)


def test_long_text_is_chunked_at_paragraphs_with_overlap_and_split(lm, tmp_path):
    paragraphs = [f"Paragraph {i} tells of the {i}th lantern on the quay, and of its keeper." for i in range(40)]
    (tmp_path / "long.txt").write_text("\n\n".join(paragraphs))
    ds = build_dataset([tmp_path], lm.tokenizer, seq_len=64, overlap=24, val_fraction=0.2, seed=1)
    chunks = ds.train + ds.val
    assert len(ds.val) >= 1 and len(ds.train) > len(ds.val)
    assert all(len(e.ids) <= 65 for e in chunks)
    starts = [lm.tokenizer.decode(e.ids) for e in chunks]
    assert all(s.startswith("Paragraph") for s in starts)  # cut at paragraph starts
    texts = sorted(starts, key=lambda s: int(s.split()[1]))
    assert texts[1].split("\n\n")[0] in texts[0]  # consecutive chunks overlap by a paragraph
    r = _reports(ds)["long.txt"]
    assert r.chunks == len(chunks) and r.tokens > 40 * 15


def test_chunk_tokens_covers_everything_and_prefers_boundaries():
    ids = list(range(100))
    scores = [3 if i % 10 == 0 else 0 for i in range(100)]
    spans = chunk_tokens(ids, scores, 25, 5)
    assert spans[0][0] == 0 and spans[-1][1] == 100
    assert all(b - a <= 25 for a, b in spans)
    assert all(b % 10 == 0 for _, b in spans[:-1])  # every cut at a boundary
    covered = set()
    for a, b in spans:
        covered |= set(range(a, b))
    assert covered == set(ids)


def test_nothing_usable_is_a_clear_error(lm, tmp_path):
    from engine.finetune import FinetuneError, finetune

    (tmp_path / "only.bin").write_bytes(b"\x00\x01")
    with pytest.raises(FinetuneError, match="nothing to train on.*only.bin: unsupported file type"):
        finetune(lm, [tmp_path], tmp_path / "out")
