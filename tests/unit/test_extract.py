"""Document detection and text extraction (baton.extract) with the sample documents (baton_dev.samples)."""

from __future__ import annotations

import codecs
import io
from pathlib import Path

import pypdf
import pytest

from baton.errors import DocumentError, UnreadableDocumentError, UnsupportedDocumentError
from baton.extract import ExtractedText, detect_kind, extract_text
from baton_dev.samples import (
    SAMPLE_HTML,
    SAMPLE_MARKDOWN,
    SAMPLE_REPORT_PAGES,
    make_pdf,
    sample_report_pdf,
)

REPO = Path(__file__).resolve().parents[2]


# --- PDF ----------------------------------------------------------------------------------------


def test_make_pdf_roundtrip_counts_pages_and_keeps_text() -> None:
    data = make_pdf([["First page, line one.", "Line two."], ["Second page here."]], title="Roundtrip")

    result = extract_text(data, filename="doc.pdf")

    assert result.kind == "pdf"
    assert result.pages == 2
    assert "First page, line one." in result.text
    assert "Line two." in result.text
    assert result.text.index("Line two.") < result.text.index("Second page here.")
    assert "\n\n" in result.text  # pages are separated by a blank line
    assert result.chars == len(result.text)
    assert result.truncated is False


def test_make_pdf_is_strictly_valid_with_title_and_escaped_characters() -> None:
    data = make_pdf([["Costs (net) rose \\ fell: 5€ café"]], title="Escapes (and) more")

    reader = pypdf.PdfReader(io.BytesIO(data), strict=True)  # strict: bad xref offsets would raise

    assert reader.metadata is not None
    assert reader.metadata.title == "Escapes (and) more"
    assert reader.pages[0].extract_text().strip() == "Costs (net) rose \\ fell: 5€ café"


def test_make_pdf_rejects_no_pages() -> None:
    with pytest.raises(ValueError, match="at least one page"):
        make_pdf([])


def test_sample_report_extracts_both_pages() -> None:
    result = extract_text(sample_report_pdf(), filename="sample-report.pdf", content_type="application/pdf")

    assert result.pages == len(SAMPLE_REPORT_PAGES) == 2
    assert "Quarterly Incident Review" in result.text
    assert "failed deploy on 14 August" in result.text
    assert "Action items" in result.text  # from page two
    assert result.truncated is False


def test_committed_sample_pdf_matches_generator() -> None:
    assert (REPO / "events" / "sample-report.pdf").read_bytes() == sample_report_pdf()


def test_corrupt_pdf_is_unreadable() -> None:
    with pytest.raises(UnreadableDocumentError, match="cannot read PDF"):
        extract_text(b"%PDF-1.4 garbage", filename="broken.pdf")


def test_truncated_pdf_file_is_unreadable() -> None:
    data = sample_report_pdf()
    with pytest.raises(UnreadableDocumentError):
        extract_text(data[: len(data) // 3], filename="cut.pdf")


def test_pdf_without_text_reports_scanned() -> None:
    with pytest.raises(UnreadableDocumentError, match=r"no extractable text \(scanned PDF\?\)"):
        extract_text(make_pdf([[], []]), filename="scan.pdf")


def test_password_protected_pdf_is_unreadable() -> None:
    writer = pypdf.PdfWriter(clone_from=io.BytesIO(make_pdf([["secret text"]])))
    writer.encrypt(user_password="hunter2", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)

    with pytest.raises(UnreadableDocumentError, match="password"):
        extract_text(buffer.getvalue(), filename="locked.pdf")


def test_pdf_encrypted_with_empty_user_password_is_read() -> None:
    writer = pypdf.PdfWriter(clone_from=io.BytesIO(make_pdf([["owner-only protection"]])))
    writer.encrypt(user_password="", owner_password="owner", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)

    assert extract_text(buffer.getvalue(), filename="perm.pdf").text == "owner-only protection"


def test_pdf_truncation_sets_flag() -> None:
    pages = [[f"Page {number} line {line} with some words." for line in range(40)] for number in range(5)]

    result = extract_text(make_pdf(pages), filename="long.pdf", max_chars=500)

    assert result.truncated is True
    assert len(result.text) <= 500
    assert result.chars == len(result.text)
    assert result.text.startswith("Page 0 line 0")
    assert result.pages == 5


# --- Markdown -----------------------------------------------------------------------------------


def test_markdown_drops_markup_but_keeps_words() -> None:
    result = extract_text(SAMPLE_MARKDOWN.encode(), filename="release-notes.md")

    assert result.kind == "markdown"
    assert result.pages is None
    assert result.text.startswith("Baton release notes\n")
    assert "#" not in result.text
    assert "```" not in result.text
    assert "https://example.com/docs/api" not in result.text  # link target dropped
    assert "see the API guide." in result.text  # link text kept
    assert "Released on 12 March." in result.text  # bold markers dropped
    # code block content survives, without its fence or language tag
    assert "baton submit --prompt" in result.text
    assert "bash" not in result.text
    assert "Note: baton dlq list shows" in result.text  # blockquote marker and backticks dropped


def test_markdown_keeps_hashes_inside_code_blocks() -> None:
    source = "## Title ##\n\n~~~\n# a shell comment\n~~~\n\n![diagram](img.png) and [ref][1]\n\n[1]: http://x.test\n"

    text = extract_text(source.encode(), filename="notes.markdown").text

    assert text == "Title\n\n# a shell comment\n\ndiagram and ref"


# --- HTML ---------------------------------------------------------------------------------------


def test_html_skips_script_style_head_and_unescapes_entities() -> None:
    result = extract_text(SAMPLE_HTML.encode(), filename="post.html")

    assert result.kind == "html"
    text = result.text
    assert "tracking pageview" not in text
    assert "ad slot" not in text
    assert "font-family" not in text
    assert "Enable JavaScript" not in text  # noscript
    assert text.count("Why our queue stopped growing") == 1  # <title> lives in <head>
    assert "every evening & drained" in text
    assert "By Dana K. — 2 October" in text
    assert "What we\u2019d do differently" in text
    assert '"temporary"' in text
    assert "<" not in text and "&amp;" not in text


def test_html_block_elements_break_lines_and_whitespace_collapses() -> None:
    markup = b"<div>one\n   two</div><p>three</p><ul>\n  <li>four</li>\n  <li>five</li>\n</ul>x<br>y"

    text = extract_text(markup, filename="page.htm").text

    assert text == "one two\n\nthree\n\n- four\n- five\n\nx\ny"


def test_html_declared_charset_is_honoured() -> None:
    markup = "<p>Crème brûlée</p>".encode("iso-8859-1")

    text = extract_text(markup, filename="page", content_type="text/html; charset=ISO-8859-1").text

    assert text == "Crème brûlée"


# --- plain text ---------------------------------------------------------------------------------


def test_text_whitespace_is_normalised() -> None:
    data = b"  alpha \t  beta  \r\n\r\n\r\n\r\ngamma\x00\n   \n\n\ndelta  "

    result = extract_text(data, filename="notes.txt")

    assert result == ExtractedText(
        text="alpha beta\n\ngamma\n\ndelta", kind="text", pages=None, chars=24, truncated=False
    )


def test_utf8_bom_is_stripped() -> None:
    result = extract_text(codecs.BOM_UTF8 + "naïve café".encode(), filename="bom.txt")

    assert result.text == "naïve café"


def test_utf16_with_bom_is_decoded() -> None:
    result = extract_text("hello wörld".encode("utf-16"), filename="wide.txt")

    assert result.text == "hello wörld"


def test_latin1_text_is_unreadable() -> None:
    data = "Crème brûlée à la française, élégant et déjà célèbre.".encode("latin-1")

    with pytest.raises(UnreadableDocumentError, match="not UTF-8 text"):
        extract_text(data, filename="legacy.txt")


def test_a_few_invalid_bytes_are_replaced() -> None:
    data = b"a" * 300 + b"\xff" + b"b" * 300

    result = extract_text(data, filename="mostly-fine.log")

    assert result.text == "a" * 300 + "\ufffd" + "b" * 300


def test_binary_data_declared_as_text_is_unreadable() -> None:
    with pytest.raises(UnreadableDocumentError):
        extract_text(b"\x00\x01\x02\x03" * 100, filename="blob.txt")


def test_text_truncation_sets_flag() -> None:
    data = ("word " * 1000).encode()

    result = extract_text(data, filename="long.txt", max_chars=100)

    assert result.truncated is True
    assert result.chars == len(result.text) <= 100
    assert result.text.startswith("word word")

    exact = extract_text(b"x" * 100, filename="exact.txt", max_chars=100)
    assert exact.truncated is False
    assert exact.chars == 100


# --- empty and unsupported ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "filename"),
    [
        (b"", "empty.txt"),
        (b"", "unknown.bin"),
        (b" \n\t\r\n ", "blank.txt"),
        (b"<html><head><title>t</title></head><body> <script>x()</script> </body></html>", "x.html"),
        (b"```\n```\n", "fences.md"),
    ],
)
def test_empty_document_is_unreadable(data: bytes, filename: str) -> None:
    with pytest.raises(UnreadableDocumentError, match="document is empty"):
        extract_text(data, filename=filename)


def test_unsupported_type_names_it_and_the_supported_kinds() -> None:
    with pytest.raises(UnsupportedDocumentError) as caught:
        extract_text(b"PK\x03\x04 zip bytes", filename="slides.pptx", content_type="application/zip")

    message = caught.value.message
    assert "'application/zip'" in message
    assert "'.pptx'" in message
    for kind in ("text", "json", "markdown", "html", "pdf", "docx"):
        assert kind in message
    assert caught.value.type == "unsupported_document"
    assert isinstance(caught.value, DocumentError)


def test_max_chars_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        extract_text(b"hello", filename="a.txt", max_chars=0)


# --- detection ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "content_type", "expected"),
    [
        ("upload", "text/plain; charset=utf-8", "text"),
        ("upload", "TEXT/CSV", "text"),
        ("upload", "text/markdown", "markdown"),
        ("upload", "text/html;charset=UTF-8", "html"),
        ("upload", "application/xhtml+xml", "html"),
        ("upload", "application/pdf", "pdf"),
        # content type wins over the extension
        ("notes.txt", "text/html", "html"),
    ],
)
def test_detect_by_content_type(filename: str, content_type: str, expected: str) -> None:
    assert detect_kind(filename, content_type, b"irrelevant") == expected


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("a.txt", "text"),
        ("a.TEXT", "text"),
        ("server.log", "text"),
        ("data.csv", "text"),
        ("README.md", "markdown"),
        ("notes.markdown", "markdown"),
        ("dir/page.html", "html"),
        ("C:\\web\\page.HTM", "html"),
        ("report.pdf", "pdf"),
    ],
)
def test_detect_by_extension(filename: str, expected: str) -> None:
    # a generic or missing content type defers to the extension
    assert detect_kind(filename, None, b"irrelevant") == expected
    assert detect_kind(filename, "application/octet-stream", b"irrelevant") == expected


def test_detect_by_magic_bytes() -> None:
    assert detect_kind("upload", "application/octet-stream", sample_report_pdf()) == "pdf"
    assert detect_kind("no-extension", None, b"%PDF-1.7\n...") == "pdf"


def test_detect_unknown_raises_naming_the_file() -> None:
    with pytest.raises(UnsupportedDocumentError, match="'mystery' of unknown type"):
        detect_kind("mystery", None, b"\x89PNG\r\n")
    with pytest.raises(UnsupportedDocumentError, match="'image/png'"):
        detect_kind("picture", "image/png", b"\x89PNG\r\n")
    with pytest.raises(UnsupportedDocumentError, match=r"'\.md5'"):
        detect_kind("checksums.md5", None, b"x")


def test_docx_paragraphs_become_lines() -> None:
    from tests.unit.test_documents import make_docx

    result = extract_text(make_docx(["First  point.", "Second point."]), filename="memo.docx")
    assert result.kind == "docx"
    assert result.text == "First point.\nSecond point."


def test_docx_is_recognised_by_its_zip_parts_without_a_name() -> None:
    from tests.unit.test_documents import make_docx

    assert extract_text(make_docx(["Body."]), filename="upload").kind == "docx"


def test_a_zip_that_is_not_a_word_document_is_unreadable() -> None:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "hi")
    with pytest.raises(UnreadableDocumentError, match=r"word/document\.xml"):
        extract_text(buffer.getvalue(), filename="fake.docx")


def test_json_is_read_as_text() -> None:
    result = extract_text(b'{"title": "Plan", "steps": ["a", "b"]}', filename="plan.json")
    assert result.kind == "json"
    assert '"steps"' in result.text


def test_no_cut_unless_asked() -> None:
    result = extract_text(b"word " * 100_000, filename="long.txt")
    assert result.chars > 400_000 and not result.truncated
