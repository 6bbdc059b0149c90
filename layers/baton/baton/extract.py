"""Turn an uploaded document (plain text, CSV, JSON, Markdown, HTML, PDF or DOCX) into clean text for a model.

Everything here is pure: bytes in, `ExtractedText` out, or a `DocumentError` subclass
(`UnsupportedDocumentError` for a type we do not read, `UnreadableDocumentError` for a document
of a supported type that yields no usable text). Neither is worth retrying.
"""

from __future__ import annotations

import codecs
import io
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Final

from baton.errors import UnreadableDocumentError, UnsupportedDocumentError

__all__ = ["SUPPORTED_KINDS", "ExtractedText", "detect_kind", "extract_text"]

SUPPORTED_KINDS: Final = ("text", "json", "markdown", "html", "pdf", "docx")

_CONTENT_TYPES: Final[dict[str, str]] = {
    "text/plain": "text",
    "text/csv": "text",
    "text/tab-separated-values": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
    "application/x-pdf": "pdf",
    "application/json": "json",
    "application/x-ndjson": "json",
    "application/jsonl": "json",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
}
# Content types that say nothing about the format: fall through to the extension and magic bytes.
_GENERIC_CONTENT_TYPES: Final = frozenset({"", "application/octet-stream", "binary/octet-stream"})

_EXTENSIONS: Final[dict[str, str]] = {
    ".txt": "text",
    ".text": "text",
    ".log": "text",
    ".csv": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".json": "json",
    ".jsonl": "json",
    ".docx": "docx",
}

_PDF_MAGIC: Final = b"%PDF-"
_ZIP_MAGIC: Final = b"PK\x03\x04"
# Share of undecodable bytes a UTF-8 document may contain before we call it "not text".
_MAX_INVALID_UTF8_RATIO: Final = 0.01
_MAX_REASON_CHARS: Final = 200


@dataclass(frozen=True)
class ExtractedText:
    """Clean text of a document.

    `chars` is `len(text)`; `truncated` says the text was cut to `max_chars`;
    `pages` is the page count for PDFs and None otherwise.
    """

    text: str
    kind: str
    pages: int | None
    chars: int
    truncated: bool


def _split_content_type(content_type: str | None) -> tuple[str, str | None]:
    """`"text/html; charset=ISO-8859-1"` -> `("text/html", "iso-8859-1")`."""
    if not content_type:
        return "", None
    media_type, *params = content_type.split(";")
    charset = None
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip("\"'").lower()
    return media_type.strip().lower(), charset


def _extension(filename: str) -> str:
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def detect_kind(filename: str, content_type: str | None, data: bytes) -> str:
    """The document kind: by content type, then file extension, then magic bytes.

    Raises `UnsupportedDocumentError` naming the type when none of them is recognised.
    """
    media_type, _ = _split_content_type(content_type)
    if media_type in _CONTENT_TYPES:
        return _CONTENT_TYPES[media_type]
    extension = _extension(filename)
    if extension in _EXTENSIONS:
        return _EXTENSIONS[extension]
    # The PDF spec tolerates a little junk before the header.
    if _PDF_MAGIC in data[:1024]:
        return "pdf"
    if data.startswith(_ZIP_MAGIC) and _is_docx(data):
        return "docx"
    described = []
    if media_type not in _GENERIC_CONTENT_TYPES:
        described.append(f"content type {media_type!r}")
    if extension:
        described.append(f"extension {extension!r}")
    what = " with ".join(described) if described else f"{filename!r} of unknown type"
    supported = ", ".join(sorted({*_EXTENSIONS}))
    raise UnsupportedDocumentError(
        f"unsupported document: {what}; supported kinds are {', '.join(SUPPORTED_KINDS)} ({supported})"
    )


# --- decoding -----------------------------------------------------------------------------------

_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def _decode_text(data: bytes, charset: str | None) -> str:
    """Decode a text document: BOMs first, then a declared charset, then UTF-8 (tolerating <1% junk)."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
        charset = "utf-8"
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise UnreadableDocumentError(f"invalid UTF-16 text: {exc.reason}") from exc

    if charset and charset not in ("utf-8", "utf8"):
        try:
            codecs.lookup(charset)
        except LookupError:
            charset = None  # unknown label: fall back to UTF-8 below
        else:
            try:
                return data.decode(charset)
            except UnicodeDecodeError as exc:
                raise UnreadableDocumentError(
                    f"text is not valid {charset} as its content type declares: {exc.reason}"
                ) from exc

    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # surrogateescape maps each undecodable byte to one lone surrogate, so they can be counted.
    invalid = len(_ESCAPED_BYTE.findall(data.decode("utf-8", errors="surrogateescape")))
    if invalid >= len(data) * _MAX_INVALID_UTF8_RATIO:
        raise UnreadableDocumentError(
            f"not UTF-8 text ({invalid} of {len(data)} bytes are invalid); "
            "save the document as UTF-8 or declare its charset in the content type"
        )
    return data.decode("utf-8", errors="replace")


# --- whitespace ---------------------------------------------------------------------------------

_LINE_BREAKS = re.compile(r"\r\n?|[\u2028\u2029\x85]")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_HSPACE = re.compile(r"[ \t\f\v\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
_SPACE_AROUND_NEWLINE = re.compile(r" *\n *")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def _normalize(text: str) -> str:
    text = _LINE_BREAKS.sub("\n", text)
    text = _CONTROL.sub("", text)
    text = _LONE_SURROGATE.sub("\ufffd", text)
    text = _HSPACE.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


# --- markdown -----------------------------------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}#{1,6}(?:[ \t]+|$)")
_CLOSING_HASHES = re.compile(r"[ \t]+#+[ \t]*$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(?:=+|-+)[ \t]*$")
_THEMATIC_BREAK = re.compile(r"^ {0,3}(?:(?:\*[ \t]*){3,}|(?:-[ \t]*){3,}|(?:_[ \t]*){3,})$")
_BLOCKQUOTE = re.compile(r"^ {0,3}(?:>[ \t]?)+")
_REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:[ \t]*\S+.*$")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_INLINE_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_REFERENCE_LINK = re.compile(r"\[([^\]]+)\]\[[^\]]*\]")
_AUTOLINK = re.compile(r"<((?:https?|mailto):[^>\s]+)>")
_STRONG = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)


def _clean_markdown(text: str) -> str:
    """Light Markdown-to-text: keep the words, drop fence markers, heading hashes and link targets."""
    text = _HTML_COMMENT.sub("", text)
    out: list[str] = []
    fence: str | None = None
    for line in text.split("\n"):
        if fence is not None:
            # Inside a code block lines are kept verbatim; only a bare fence as long as the opening ends it.
            stripped = line.strip()
            if len(stripped) >= len(fence) and set(stripped) == {fence[0]}:
                fence = None
            else:
                out.append(line)
            continue
        fence_match = _FENCE.match(line)
        if fence_match:
            fence = fence_match.group(1)
            continue
        if _THEMATIC_BREAK.match(line) or _SETEXT_UNDERLINE.match(line) or _REFERENCE_DEFINITION.match(line):
            out.append("")
            continue
        line = _BLOCKQUOTE.sub("", line)
        if _HEADING.match(line):
            line = _CLOSING_HASHES.sub("", _HEADING.sub("", line))
        line = _IMAGE.sub(r"\1", line)
        line = _INLINE_LINK.sub(r"\1", line)
        line = _REFERENCE_LINK.sub(r"\1", line)
        line = _AUTOLINK.sub(r"\1", line)
        line = _STRONG.sub(r"\2", line)
        line = _INLINE_CODE.sub(r"\1", line)
        out.append(line)
    return "\n".join(out)


# --- HTML ---------------------------------------------------------------------------------------

_SKIPPED_TAGS: Final = frozenset({"script", "style", "head", "noscript", "template", "svg"})
_PARAGRAPH_TAGS: Final = frozenset(
    {
        *(f"h{level}" for level in range(1, 7)),
        "address", "article", "aside", "blockquote", "details", "dl", "fieldset", "figure",
        "footer", "form", "header", "hr", "main", "nav", "ol", "p", "pre", "section", "table", "ul",
    }
)  # fmt: skip
_LINE_TAGS: Final = frozenset(
    {"br", "caption", "dd", "div", "dt", "figcaption", "li", "option", "summary", "tr", "title"}
)
_CELL_TAGS: Final = frozenset({"td", "th"})
_HTML_SPACE = re.compile(r"\s+")


class _HTMLTextCollector(HTMLParser):
    """Collects the visible text of an HTML page; entities are unescaped by `convert_charrefs`.

    Block elements request line breaks; the breaks are written only before the next visible text,
    so the whitespace between tags never turns into extra blank lines.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._parts: list[str] = []
        self._skip_depth = 0
        self._pre_depth = 0
        self._pending_newlines = 0
        self._pending_bullet = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self._skip_depth = 0  # a missing </head> must not hide the whole body
        if tag in _SKIPPED_TAGS:
            self._skip_depth += 1
            return
        if tag == "pre":
            self._pre_depth += 1
        self._break(tag)
        if tag == "li" and not self._skip_depth:
            self._pending_bullet = True

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
            return
        if tag == "pre":
            self._pre_depth = max(0, self._pre_depth - 1)
        self._break(tag)

    def handle_data(self, data: str) -> None:
        if self._skip_depth:
            return
        if not self._pre_depth:
            data = _HTML_SPACE.sub(" ", data)
        if self._pending_newlines or self._pending_bullet:
            if not data.strip():
                return
            if self._parts:
                self._parts.append("\n" * max(1, self._pending_newlines))
            if self._pending_bullet:
                self._parts.append("- ")
            self._pending_newlines = 0
            self._pending_bullet = False
            data = data.lstrip(" ")
        self._parts.append(data)

    def _break(self, tag: str) -> None:
        if self._skip_depth:
            return
        if tag in _PARAGRAPH_TAGS:
            self._pending_newlines = 2
        elif tag in _LINE_TAGS:
            self._pending_newlines = max(self._pending_newlines, 1)
        elif tag in _CELL_TAGS and self._parts:
            self._parts.append(" ")

    def text(self) -> str:
        return "".join(self._parts)


def _html_to_text(markup: str) -> str:
    parser = _HTMLTextCollector()
    parser.feed(markup)
    parser.close()
    return parser.text()


# --- PDF ----------------------------------------------------------------------------------------


def _short_reason(exc: BaseException) -> str:
    detail = str(exc).strip() or "no detail"
    if len(detail) > _MAX_REASON_CHARS:
        detail = detail[: _MAX_REASON_CHARS - 1] + "…"
    return f"{type(exc).__name__}: {detail}"


def _pdf_to_text(data: bytes, max_chars: int | None) -> tuple[str, int]:
    """Text of each page (normalised, blank-line separated) and the page count.

    Stops reading pages once `max_chars` are collected: the caller truncates anyway.
    """
    import pypdf  # imported lazily: only PDF jobs pay for it

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                decrypted = reader.decrypt("")
            except Exception as exc:
                raise UnreadableDocumentError(
                    f"encrypted PDF cannot be opened: {_short_reason(exc)}"
                ) from exc
            if decrypted == pypdf.PasswordType.NOT_DECRYPTED:
                raise UnreadableDocumentError("PDF is protected by a password")
        page_count = len(reader.pages)
        texts: list[str] = []
        collected = 0
        for page in reader.pages:
            page_text = _normalize(page.extract_text() or "")
            if not page_text:
                continue
            texts.append(page_text)
            collected += len(page_text) + 2
            if max_chars is not None and collected > max_chars:
                break
    except UnreadableDocumentError:
        raise
    except Exception as exc:  # pypdf raises PdfReadError but also ValueError, KeyError, ... on bad input
        raise UnreadableDocumentError(f"cannot read PDF ({_short_reason(exc)})") from exc
    if not texts:
        raise UnreadableDocumentError("no extractable text (scanned PDF?)")
    return "\n\n".join(texts), page_count


# --- DOCX -------------------------------------------------------------------------------------
# A .docx is a zip of XML parts (ECMA-376); its body text is the w:t runs of word/document.xml.
# Read with the standard library (zipfile + ElementTree, which resolves no external entities)
# rather than python-docx, whose lxml would be the layer's one more native wheel.

_W_NS: Final = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_DOCX_BODY: Final = "word/document.xml"
# A zip bomb must not exhaust the function's memory: the XML we inflate is bounded.
_MAX_DOCX_XML_BYTES: Final = 64 * 1024 * 1024


def _is_docx(data: bytes) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return _DOCX_BODY in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def _docx_to_text(data: bytes) -> str:
    """Paragraphs of the main document part, one per line; tabs and breaks kept as whitespace."""
    import zipfile
    from xml.etree import ElementTree

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            info = archive.getinfo(_DOCX_BODY)
            if info.file_size > _MAX_DOCX_XML_BYTES:
                raise UnreadableDocumentError(
                    f"DOCX body is {info.file_size} bytes uncompressed; the limit is {_MAX_DOCX_XML_BYTES}"
                )
            with archive.open(info) as part:
                xml = part.read(_MAX_DOCX_XML_BYTES + 1)
        # Safe on untrusted input here: ElementTree resolves no external entities, and the expat
        # it runs on (>= 2.4.1, bundled with Python 3.13) refuses entity expansion bombs.
        root = ElementTree.fromstring(xml)  # noqa: S314
    except UnreadableDocumentError:
        raise
    except KeyError as exc:
        raise UnreadableDocumentError("not a Word document: the archive has no word/document.xml") from exc
    except Exception as exc:  # BadZipFile, ParseError, zlib errors, ...
        raise UnreadableDocumentError(f"cannot read DOCX ({_short_reason(exc)})") from exc
    paragraphs: list[str] = []
    for paragraph in root.iter(f"{_W_NS}p"):
        parts: list[str] = []
        for node in paragraph.iter():
            if node.tag == f"{_W_NS}t" and node.text:
                parts.append(node.text)
            elif node.tag == f"{_W_NS}tab":
                parts.append("\t")
            elif node.tag in (f"{_W_NS}br", f"{_W_NS}cr"):
                parts.append("\n")
        paragraphs.append("".join(parts))
    return "\n".join(paragraphs)


# --- entry point --------------------------------------------------------------------------------


def extract_text(
    data: bytes, *, filename: str, content_type: str | None = None, max_chars: int | None = None
) -> ExtractedText:
    """Detect the document kind, extract and normalise its text, and cut it to `max_chars` (if given;
    the caller decides what a long text becomes: map-reduce, an announced truncation, or a failure).

    Raises `UnsupportedDocumentError` for a kind we do not read and `UnreadableDocumentError`
    for an empty, corrupt, encrypted, image-only or non-text document.
    """
    if max_chars is not None and max_chars < 1:
        raise ValueError("max_chars must be positive")
    if not data:
        raise UnreadableDocumentError("document is empty")
    kind = detect_kind(filename, content_type, data)
    pages: int | None = None
    if kind == "pdf":
        text, pages = _pdf_to_text(data, max_chars)
    elif kind == "docx":
        text = _normalize(_docx_to_text(data))
    else:
        _, charset = _split_content_type(content_type)
        raw = _LINE_BREAKS.sub("\n", _decode_text(data, charset))
        if raw.count("\x00") > max(1, len(raw) // 100):
            raise UnreadableDocumentError("document looks binary, not text (it contains NUL bytes)")
        if kind == "markdown":
            raw = _clean_markdown(raw)
        elif kind == "html":
            raw = _html_to_text(raw)
        text = _normalize(raw)
    if not text:
        raise UnreadableDocumentError("document is empty")
    truncated = max_chars is not None and len(text) > max_chars
    if max_chars is not None and truncated:
        text = text[:max_chars].rstrip()
    return ExtractedText(text=text, kind=kind, pages=pages, chars=len(text), truncated=truncated)
