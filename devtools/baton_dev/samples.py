"""Sample documents for demos and tests, including a tiny dependency-free PDF writer."""

from __future__ import annotations

from typing import Final

__all__ = [
    "SAMPLE_HTML",
    "SAMPLE_MARKDOWN",
    "SAMPLE_REPORT_PAGES",
    "make_pdf",
    "sample_report_pdf",
]

_PAGE_WIDTH: Final = 612  # US Letter, in points
_PAGE_HEIGHT: Final = 792


def _pdf_literal(text: str) -> bytes:
    """A PDF literal string in WinAnsiEncoding: `\\ ( )` escaped, non-ASCII bytes as octal escapes."""
    out = bytearray(b"(")
    for byte in text.encode("cp1252", errors="replace"):
        if byte in b"\\()":
            out += b"\\" + bytes([byte])
        elif byte == 0x0A:
            out += b"\\n"
        elif byte == 0x0D:
            out += b"\\r"
        elif byte < 0x20 or byte > 0x7E:
            out += b"\\%03o" % byte
        else:
            out.append(byte)
    out += b")"
    return bytes(out)


def _pdf_text_string(text: str) -> bytes:
    """A PDF text string (for /Info): literal when ASCII, otherwise UTF-16BE with a BOM, in hex."""
    if text.isascii():
        return _pdf_literal(text)
    return b"<FEFF" + text.encode("utf-16-be").hex().upper().encode("ascii") + b">"


def _content_stream(lines: list[str]) -> bytes:
    parts = [b"BT /F1 11 Tf 72 720 Td 14 TL"]
    parts.extend(_pdf_literal(line) + b" Tj T*" for line in lines)
    parts.append(b"ET")
    return b"\n".join(parts)


def make_pdf(pages: list[list[str]], title: str = "Baton sample") -> bytes:
    """A minimal valid PDF 1.4: one page per entry of `pages`, each line of text on its own line.

    Helvetica 11pt, 14pt leading, from the top-left margin; lines are neither wrapped nor paginated,
    so keep them under ~90 characters and ~48 per page for the page to look right. The output is
    deterministic (no dates, no IDs). Characters outside Windows-1252 become `?`.
    """
    if not pages:
        raise ValueError("a PDF needs at least one page")

    # Object numbers: 1 catalog, 2 page tree, 3 font, 4 info, then (page, content) pairs.
    first_page = 5
    page_refs = [f"{first_page + 2 * index} 0 R".encode() for index in range(len(pages))]
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + b" ".join(page_refs) + b"] /Count %d >>" % len(pages),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Title " + _pdf_text_string(title) + b" /Producer (Baton) >>",
    ]
    for index, lines in enumerate(pages):
        content_number = first_page + 2 * index + 1
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] " % (_PAGE_WIDTH, _PAGE_HEIGHT)
            + b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % content_number
        )
        stream = _content_stream(lines)
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")

    # A comment with high bytes right after the header tells transfer tools the file is binary.
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets: list[int] = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_offset = len(out)
    out += b"xref\n0 %d\n" % (len(objects) + 1)
    out += b"0000000000 65535 f \n"  # each entry is exactly 20 bytes, EOL included
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 4 0 R >>\n" % (len(objects) + 1)
    out += b"startxref\n%d\n%%%%EOF\n" % xref_offset
    return bytes(out)


SAMPLE_REPORT_PAGES: Final[list[list[str]]] = [
    [
        "Quarterly Incident Review: Ledgerline Payments API, Q3",
        "",
        "Summary",
        "Ledgerline processed 41.2 million payment requests this quarter with 99.93% availability,",
        "short of the 99.95% objective. Three incidents account for nearly all of the lost minutes.",
        "The most serious was a failed deploy on 14 August that left card refunds unavailable for",
        "47 minutes in the EU region. No payments were lost or duplicated, but 1,860 refunds were",
        "delayed until the following morning and merchants opened 212 support tickets.",
        "",
        "Latency",
        "Median latency held steady at 84 ms, but p99 latency rose from 610 ms to 1.4 seconds",
        "during the month-end settlement window. Profiling traced the regression to a new fraud",
        "scoring call that runs synchronously on every authorisation. Moving it behind a 150 ms",
        "timeout with a cached fallback brought p99 back to 700 ms in staging.",
        "",
        "Queue depth",
        "The settlement queue peaked at 380,000 messages on 30 September, against a normal",
        "ceiling of 40,000. Consumers were capped at 20 concurrent workers by an old setting",
        "that nobody had revisited since launch. The backlog drained in 3 hours once the cap",
        "was raised to 80, and no settlement missed its banking cut-off.",
    ],
    [
        "The failed deploy",
        "Release 2024.08.3 shipped a database migration that renamed the refund_reason column",
        "before the application code that reads it had rolled out everywhere. Old instances",
        "failed every refund with a 500 error. The canary stage did not catch the problem",
        "because canary traffic contains no refunds. Rolling back the code did not help, since",
        "the migration had already run; the on-call engineer restored service by adding the old",
        "column back as a view. Detection took 19 minutes because the refund error alarm",
        "only fires above a 5% error rate, and refunds are under 2% of total traffic.",
        "",
        "Action items",
        "1. Split schema changes into expand and contract releases (owner: Priya N., due Oct 31).",
        "2. Add synthetic refund requests to canary traffic (owner: Tomas R., due Oct 15).",
        "3. Alert on refund errors per endpoint rather than on the global rate (owner: Dana K.).",
        "4. Autoscale settlement consumers on queue age, not a fixed cap (owner: Priya N.).",
        "5. Put the fraud scoring call behind a timeout and cache in production (owner: Li W.).",
        "",
        "Outlook",
        "With these changes in place, the team expects to meet the 99.95% availability objective",
        "in Q4, including the holiday peak, which is forecast at 1.8 times current volume.",
    ],
]


def sample_report_pdf() -> bytes:
    """The two-page sample incident review as a PDF (also committed as events/sample-report.pdf)."""
    return make_pdf(SAMPLE_REPORT_PAGES, title="Quarterly Incident Review: Ledgerline Payments API")


# Release notes in Markdown for the demo's document job. They describe only what Baton does
# (tests/unit/test_samples.py runs every `baton` command in them and checks every event type).
SAMPLE_MARKDOWN: Final = """\
# Baton release notes

Released on **12 March**. This release focuses on reliability of long-running jobs.

## New

- A job can be cancelled while it waits in a queue; see the [API guide](https://example.com/docs/api).
- Signed webhooks (Standard Webhooks): `job.completed`, `job.failed`, `job.cancelled`, `job.needs_review`.
- Documents up to 25 MiB are accepted, among them PDF, text, Markdown and HTML.

## Fixed

- A redelivered command no longer calls the model twice.
- Summaries of HTML pages no longer include the text of inline scripts.

## Upgrading

Clients that poll for status can have the result pushed to a webhook instead:

```bash
baton submit --prompt "Summarize the incident review." --webhook-url https://hooks.example.com/baton
```

> Note: `baton dlq list` shows the messages parked in each dead-letter queue.
"""

SAMPLE_HTML: Final = """\
<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Why our queue stopped growing</title>
  <style>body { font-family: sans-serif; } .hidden { display: none; }</style>
  <script>window.analytics = { track: function () { console.log("tracking pageview"); } };</script>
</head>
<body>
  <nav><a href="/">Home</a> | <a href="/blog">Blog</a></nav>
  <article>
    <h1>Why our queue stopped growing</h1>
    <p class="byline">By Dana K. &mdash; 2 October</p>
    <p>For months our settlement queue grew every evening &amp; drained by morning.
       We assumed traffic was to blame, but the real cause was a worker cap of 20
       that nobody had touched since launch.</p>
    <p>Raising the cap to 80 cleared a backlog of 380,000 messages in three hours.
       We now scale workers on the age of the oldest message instead of a fixed number.</p>
    <h2>What we&#8217;d do differently</h2>
    <ul>
      <li>Alert on queue age, not queue length.</li>
      <li>Review every &quot;temporary&quot; limit at each quarterly incident review.</li>
    </ul>
    <script>document.write("ad slot");</script>
    <noscript>Enable JavaScript to see comments.</noscript>
  </article>
</body>
</html>
"""
