"""MessageBuilder's bytes, parsed back with the stdlib parser (`policy.default`, as mail clients
built on it read them).

The property: for any subject, header value, file name and text (controls, line breaks, NUL,
encoded-word lookalikes, very long words, any Unicode), the parsed mail has exactly the headers
the builder meant, each reading back as the text given (a run of controls or line separators as
one space), the bodies and attachments unchanged, no line over 998 octets, a subject's lines
within 78 characters and never folded right after its name.  `check_mail` is shared with the
SMTP test, which sends such mails through a real server.

The stdlib's own generator is no reference: its header parser decodes encoded words in the text
it is given, so `=?utf-8?q?x?=` came out as `x`, and (on this Python) one holding CR LF as a
header of its own.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage
from email.utils import formatdate, parseaddr

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.errors import PermanentDeliveryError
from notifier.message import Attachment, Outgoing
from notifier.mime import MessageBuilder

SENDER = "Renga Bot <renga@example.org>"
NOW = 1_700_000_000.0
ICS = b"BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n"
UNSUBSCRIBE = (
    "<https://renga.example.org/unsubscribe?token=" + "t" * 90 + ">, <mailto:u@example.org>"
)
HOSTILE_TITLE = "=?utf-8?q?Lunch=0D=0AReply-To:_attacker@evil.example?="


def mail(recipient: str = "alice@example.org", **fields: object) -> Outgoing:
    defaults: dict[str, object] = {"key": "n1.email", "subject": "Hello", "text": "Hi\n"}
    return Outgoing(channel="email", recipient=recipient, **{**defaults, **fields})  # type: ignore[arg-type]


def parse(data: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def content(part: EmailMessage) -> str:
    text = part.get_content()
    assert isinstance(text, str)
    return text


def as_header(text: str) -> str:
    """The documented normalisation: a run of C0 or C1 controls, DEL, U+2028 or U+2029 (all
    line breaks to some reader) is one space; tab stays."""
    return re.sub(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]+", " ", text)


def lines_of(text: str) -> list[str]:
    """Text as a reader gets it: CR, LF or CRLF all end a line (the last one ended or not)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return lines[:-1] if lines[-1] == "" else lines


# --- examples ----------------------------------------------------------------------------------


def test_a_digest_is_multipart_alternative_with_both_texts() -> None:
    text = "Hello Alice,\n\nSince your last digest · 3 updates\n  - Bob voted\n"
    html = "<p>Hello <b>Alice</b> · 3 updates</p>\n"
    data, utf8 = MessageBuilder(SENDER).build(
        mail(
            subject="Your daily Renga digest: 3 updates",
            text=text,
            html=html,
            headers=(("List-Unsubscribe", UNSUBSCRIBE),),
        ),
        NOW,
    )
    assert not utf8 and data.isascii()
    got = parse(data)
    assert got["From"] == SENDER
    assert got["To"] == "alice@example.org"
    assert got["Subject"] == "Your daily Renga digest: 3 updates"
    assert got["Date"] == formatdate(NOW)
    assert got["Message-ID"] == "<renga.n1.email@example.org>"
    assert got["In-Reply-To"] is None and got["References"] is None
    assert got["Auto-Submitted"] == "auto-generated"
    assert got["List-Unsubscribe"] == UNSUBSCRIBE
    assert got["MIME-Version"] == "1.0"
    assert got.get_content_type() == "multipart/alternative"
    plain, rich = got.iter_parts()
    assert isinstance(plain, EmailMessage) and isinstance(rich, EmailMessage)
    assert (plain.get_content_type(), rich.get_content_type()) == ("text/plain", "text/html")
    assert plain["Content-Transfer-Encoding"] == rich["Content-Transfer-Encoding"] == "base64"
    assert content(plain).splitlines() == text.splitlines()
    assert content(rich).splitlines() == html.splitlines()
    raw = plain.get_payload(decode=True)
    assert isinstance(raw, bytes) and raw == text.replace("\n", "\r\n").encode()  # canonical


def test_a_long_list_header_is_folded_after_its_commas_and_never_encoded() -> None:
    data, _ = MessageBuilder(SENDER).build(mail(headers=(("List-Unsubscribe", UNSUBSCRIBE),)), NOW)
    first, second = UNSUBSCRIBE.split(", ")
    assert f"List-Unsubscribe: {first},\r\n {second}\r\n".encode() in data
    assert parse(data)["List-Unsubscribe"] == UNSUBSCRIBE


def test_short_ascii_text_goes_as_is_with_crlf_line_breaks() -> None:
    data, _ = MessageBuilder(SENDER).build(mail(text="one\ntwo\r\nthree\rfour"), NOW)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b'\r\nContent-Type: text/plain; charset="utf-8"\r\n' in head
    assert head.endswith(b"\r\nContent-Transfer-Encoding: 7bit")
    assert body == b"one\r\ntwo\r\nthree\r\nfour\r\n"  # ended, as aiosmtplib would end it


@pytest.mark.parametrize(
    "text", ["café\n", "bell \x07\n", "form feed \x0c\n", "x" * 999 + "\n", "delete \x7f"]
)
def test_other_text_goes_as_base64_with_canonical_line_breaks(text: str) -> None:
    data, _ = MessageBuilder(SENDER).build(mail(text=text), NOW)
    got = parse(data)
    assert got["Content-Transfer-Encoding"] == "base64"
    raw = got.get_payload(decode=True)
    assert isinstance(raw, bytes)
    assert raw == b"\r\n".join(text.encode().splitlines()) + b"\r\n"


def test_an_invitation_is_attached_with_its_full_content_type() -> None:
    builder = MessageBuilder(SENDER)
    sent = mail(
        text="See the invitation.\n",
        html="<p>See the invitation.</p>",
        thread="ev-7",
        attachments=(Attachment("invite.ics", "text/calendar; method=REQUEST", ICS),),
    )
    data, _ = builder.build(sent, NOW)
    got = parse(data)
    assert got["In-Reply-To"] == got["References"] == "<renga.event.ev-7@example.org>"
    assert got.get_content_type() == "multipart/mixed"
    body, invite = got.iter_parts()
    assert isinstance(body, EmailMessage) and isinstance(invite, EmailMessage)
    assert body.get_content_type() == "multipart/alternative"
    plain, html = body.iter_parts()
    assert isinstance(plain, EmailMessage) and isinstance(html, EmailMessage)
    assert content(plain).splitlines() == ["See the invitation."]
    assert content(html).splitlines() == ["<p>See the invitation.</p>"]
    assert invite.get_content_type() == "text/calendar"
    assert invite.get_param("method") == "REQUEST"
    assert invite.get_content_disposition() == "attachment"
    assert invite.get_filename() == "invite.ics"
    assert invite["Content-Transfer-Encoding"] == "base64"
    assert invite.get_payload(decode=True) == ICS

    boundaries = {got.get_boundary(), body.get_boundary()}
    assert len(boundaries) == 2 and all(re.fullmatch(r"=_[0-9a-f]{24}", str(b)) for b in boundaries)
    again = parse(builder.build(sent, NOW)[0])
    assert again.get_boundary() not in boundaries  # random, so no part can know it


def test_a_non_ascii_file_name_is_rfc2231_encoded() -> None:
    sent = mail(attachments=(Attachment("réunion.ics", "text/calendar", ICS),))
    data, _ = MessageBuilder(SENDER).build(sent, NOW)
    assert data.isascii()
    _, invite = parse(data).iter_parts()
    assert isinstance(invite, EmailMessage) and invite.get_filename() == "réunion.ics"


def test_only_a_non_ascii_address_is_raw_utf8() -> None:
    """SMTPUTF8 is for the address; other headers stay ASCII, which every reader decodes (the
    stdlib parser would read a raw UTF-8 display name as surrogates)."""
    builder = MessageBuilder("Rengä <renga@example.org>")
    for recipient in ("jöran@example.org", "alice@example.org"):
        data, utf8 = builder.build(mail(recipient, subject="Réunion samedi"), NOW)
        assert utf8 == (recipient != "alice@example.org")
        head = data.partition(b"\r\n\r\n")[0]
        assert head.replace(f"To: {recipient}\r\n".encode(), b"").isascii()
        got = parse(data)
        assert (got["Subject"], got["From"]) == ("Réunion samedi", "Rengä <renga@example.org>")
        assert got["To"] == recipient


def test_hostile_values_stay_in_their_header() -> None:
    data, _ = MessageBuilder(SENDER).build(
        mail(
            subject="Hi\r\nBcc: evil@x.org\x00\x0b<script>",
            headers=(("X-Renga-Note", "fine\nBcc: evil2@x.org\r\n\r\nbody"),),
            text="line one\r\n.\r\nBcc: not a header\n",
        ),
        NOW,
    )
    got = parse(data)
    assert got["Bcc"] is None
    assert got["Subject"] == "Hi Bcc: evil@x.org <script>"
    assert got["X-Renga-Note"] == "fine Bcc: evil2@x.org body"
    assert content(got).splitlines() == ["line one", ".", "Bcc: not a header"]


@pytest.mark.parametrize(
    "sent",
    [
        mail("alice@example.org\r\nRCPT TO:<evil@x.org>"),
        mail("not an address"),
        mail(headers=(("Bcc", "evil@x.org"),)),
        mail(headers=(("content-type", "text/html"),)),
        mail(headers=(("Bad:Name", "x"),)),
        mail(headers=(("Reply-To", "a@x.org"), ("Reply-To", "b@x.org"))),
        mail(attachments=(Attachment("x", "nonsense", b""),)),
        mail(text="lone \ud800 surrogate"),
        mail(subject="lone \ud800 surrogate"),
    ],
)
def test_unbuildable_messages_are_permanent_failures(sent: Outgoing) -> None:
    with pytest.raises(PermanentDeliveryError):
        MessageBuilder(SENDER).build(sent, NOW)


def test_the_issue_title_is_a_subject_and_nothing_else() -> None:
    """Issue 9, defect 6: the title became `Reply-To:` and `From:` headers and body text."""
    title = HOSTILE_TITLE + "\r\nFrom: boss@evil.example\r\n\r\nPay now"
    data, _ = MessageBuilder(SENDER).build(mail(subject=f"alice invited you to {title}"), NOW)
    got = parse(data)
    assert got["Reply-To"] is None
    assert got.get_all("From") == [SENDER]
    assert got["Subject"] == f"alice invited you to {as_header(title)}"
    assert content(got).splitlines() == ["Hi"]
    assert b"\nReply-To:" not in data and data.startswith(b"From:")
    assert b"\nFrom:" not in data


@pytest.mark.parametrize(
    "subject",
    [
        "=?utf-8?q?x?=",
        "a =?utf-8?b?w6k=?= b",
        "=?iso-8859-1?q?=E9?==?utf-8?q?x?=",
        "x=?utf-8?q?y?=z",
        "=?utf-8?q?a?= =?utf-8?q?b?=",
    ],
)
def test_text_like_an_encoded_word_reads_as_itself(subject: str) -> None:
    data, _ = MessageBuilder(SENDER).build(mail(subject=subject), NOW)
    assert parse(data)["Subject"] == subject


@pytest.mark.parametrize("recipient", ["alice@example.org", "jöran@example.org"])
def test_a_long_subject_is_never_folded_right_after_its_name(recipient: str) -> None:
    for subject in ("z" * 75 + " end", "Lunch " + "y" * 100, "é" * 90, "x" * 69, "a " * 60):
        data, _ = MessageBuilder(SENDER).build(mail(recipient, subject=subject), NOW)
        head = data.partition(b"\r\n\r\n")[0]
        first = re.search(rb"^Subject:(.*)$", head, re.MULTILINE)
        assert first is not None and first[1].strip(b" \r"), head
        assert parse(data)["Subject"] == subject


def test_header_white_space_is_kept_exactly() -> None:
    for subject in (" lead", "trail ", "two  spaces", "a\ttab", "   ", "é é", "é  x é"):
        data, _ = MessageBuilder(SENDER).build(mail(subject=subject), NOW)
        assert parse(data)["Subject"] == subject


@pytest.mark.parametrize(
    "sender",
    [
        '"=?utf-8?q?Boss=0D=0ABcc:_x@evil.example?=" <renga@example.org>',
        '"Renga, the \\"bot\\"" <renga@example.org>',
        "Rengä Bøt <renga@example.org>",
        "Renga\u2028Bot <renga@example.org>",
        "renga@example.org",
    ],
)
@pytest.mark.parametrize("recipient", ["alice@example.org", "jöran@example.org"])
def test_a_sender_display_name_reads_as_itself(sender: str, recipient: str) -> None:
    data, _ = MessageBuilder(sender).build(mail(recipient), NOW)
    got = parse(data)
    assert got["Bcc"] is None and len(got.get_all("From") or []) == 1
    (address,) = got["From"].addresses
    assert (address.display_name, address.addr_spec) == parseaddr(as_header(sender))


def test_a_file_name_is_plain_or_rfc2231_and_reads_as_itself() -> None:
    for filename in ("event.ics", "a b.ics", "=?utf-8?q?x=0D=0A?=.ics", "é" * 70, 'q"uote\\.ics'):
        sent = mail(attachments=(Attachment(filename, "text/calendar", ICS),))
        data, _ = MessageBuilder(SENDER).build(sent, NOW)
        _, part = parse(data).iter_parts()
        assert isinstance(part, EmailMessage) and part.get_filename() == filename
        assert part.get_payload(decode=True) == ICS


@pytest.mark.parametrize(
    "content_type",
    [
        "text/calendar; method=REQUEST\r\nX-Evil: 1",
        'text/plain; name="=?utf-8?q?x?="',
        'text/plain; name="é"',
        "text/plain; charset=utf-8 junk",
    ],
)
def test_a_content_type_that_is_not_plain_mime_is_refused(content_type: str) -> None:
    with pytest.raises(PermanentDeliveryError):
        MessageBuilder(SENDER).build(mail(attachments=(Attachment("a", content_type, b""),)), NOW)


@pytest.mark.parametrize("recipient", ["=?utf-8?q?a?=@x.org", "a\x01b@x.org", "a\x85b@x.org"])
def test_an_address_a_reader_would_read_differently_is_refused(recipient: str) -> None:
    with pytest.raises(PermanentDeliveryError):
        MessageBuilder(SENDER).build(mail(recipient), NOW)


# --- the property ------------------------------------------------------------------------------

_OWN = ["from", "to", "subject", "date", "message-id"]
_FOLD_AFTER_NAME = re.compile(rb"^[!-9;-~]+:[ \t]*\r\n[ \t]", re.MULTILINE)


def check_mail(data: bytes, message: Outgoing, sender: str = SENDER) -> None:
    """What any mail the builder made for `message` must be, read by the stdlib parser."""
    head, _, _ = data.partition(b"\r\n\r\n")
    lines = data.split(b"\r\n")
    assert lines.pop() == b""  # every line ends in CRLF
    assert all(b"\r" not in line and b"\n" not in line and len(line) <= 998 for line in lines)
    assert not _FOLD_AFTER_NAME.search(head), head
    subject = re.search(rb"^Subject:[^\r]*(?:\r\n[ \t][^\r]*)*", head, re.MULTILINE)
    assert subject is not None
    assert all(len(line.decode()) <= 78 for line in subject[0].split(b"\r\n")), subject[0]

    got = parse(data)
    names = [*_OWN, *(["in-reply-to", "references"] if message.thread is not None else [])]
    names += ["auto-submitted", *(name.lower() for name, _ in message.headers), "mime-version"]
    names += ["content-type"]
    if message.html is None and not message.attachments:
        names += ["content-transfer-encoding"]
    assert [name.lower() for name in got.keys()] == names  # noqa: SIM118 (values not parsed)
    assert not got.defects
    assert got.get_all("From") == [sender]
    assert got["To"] == message.recipient
    assert got["Subject"] == as_header(message.subject)
    for name, value in message.headers:
        assert got[name] == as_header(value), name

    parts = list(got.iter_parts()) if message.attachments else [got]
    body = parts[0]
    texts = list(body.iter_parts()) if message.html is not None else [body]
    expected = [message.text] if message.html is None else [message.text, message.html]
    assert len(texts) == len(expected)
    for part, text in zip(texts, expected, strict=True):
        assert isinstance(part, EmailMessage)
        assert lines_of(content(part)) == lines_of(text)
    for part, attachment in zip(parts[1:], message.attachments, strict=True):
        assert isinstance(part, EmailMessage)
        filename = as_header(attachment.filename).strip()  # readers strip a file name
        params = part["Content-Disposition"].params  # get_filename() also drops <>
        assert params.get("filename") == (filename or None)
        assert part.get_payload(decode=True) == attachment.data
        assert part.get_content_type() == attachment.content_type.partition(";")[0].lower()


TRICKY = (
    HOSTILE_TITLE,
    "=?utf-8?q?x?=",
    "=?utf-8?b?w6k=?=",
    "=?UTF-8?Q?=0D=0ABcc:_e@x.org?=",
    "=?",
    "?=",
    ", ",
    "; ",
    "\r\n",
    "\r\nBcc: evil@example.org\r\n",
    "\n\n",
    "\r",
    "\t",
    "\x00",
    "\x0b",
    "\x1c",
    "\x85",
    "\x9b",
    "\u2028",
    "\u2029",
    " ",
    "  ",
    "é",
    "日本",
    "\u00a0",
    "\u200b",
    "\U0001f600",
    "x" * 80,
    "y" * 1000,
    "<https://example.org/u?t=1>",
    "%",
    '"',
    "\\",
)
_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
_CHARS = st.one_of(
    st.characters(max_codepoint=0x7F),  # ASCII more often
    st.characters(blacklist_categories=("Cs",)),  # any Unicode but lone surrogates
)
_PIECES = st.one_of(st.sampled_from(TRICKY), st.text(_CHARS, max_size=30))
_TEXT = st.one_of(
    st.lists(_PIECES, max_size=8).map("".join),
    st.text(_PRINTABLE, min_size=60, max_size=90),  # about where headers fold
    st.lists(st.sampled_from(["ab", "c", " ", "x" * 70, "é"]), max_size=30).map("".join),
)
_DOT_ATOM_ADDRESS = r"[a-z0-9+=?-]{1,30}(\.[a-z0-9+=?-]{1,30})?@[a-z0-9-]{1,20}(\.[a-z]{2,9})?"
_RECIPIENTS = st.one_of(
    st.sampled_from(["alice@example.org", "jöran@example.org", "l" * 80 + "@example.org"]),
    st.from_regex(_DOT_ATOM_ADDRESS, fullmatch=True).filter(lambda address: "=?" not in address),
)
_NAMES = st.sampled_from(["List-Unsubscribe", "List-Unsubscribe-Post", "List-Id", "X-Note"])
_CONTENT_TYPES = st.sampled_from(
    ["text/calendar; method=REQUEST", 'text/calendar; charset="utf-8"; method=PUBLISH', "x/y"]
)
_MESSAGES = st.builds(
    Outgoing,
    key=_TEXT,
    channel=st.just("email"),
    recipient=_RECIPIENTS,
    subject=_TEXT,
    text=_TEXT,
    html=st.none() | _TEXT,
    thread=st.none() | _TEXT,
    headers=st.lists(st.tuples(_NAMES, _TEXT), max_size=3, unique_by=lambda h: h[0]).map(tuple),
    attachments=st.lists(st.builds(Attachment, _TEXT, _CONTENT_TYPES, st.binary()), max_size=2).map(
        tuple
    ),
)


@settings(max_examples=300, deadline=None)
@given(_MESSAGES, st.floats(min_value=0, max_value=4e9))
def test_any_text_reads_back_as_itself_in_its_own_header(message: Outgoing, now: float) -> None:
    data, utf8 = MessageBuilder(SENDER).build(message, now)
    assert utf8 == (not message.recipient.isascii())
    assert utf8 or data.isascii()
    check_mail(data, message)
    assert parse(data)["Date"] == formatdate(now)


@pytest.mark.parametrize("breaker", ["\u2028", "\u2029", "\x85"])
def test_unicode_line_breaks_in_a_subject_become_spaces(breaker: str) -> None:
    """The email policy takes them for line breaks: a title that holds one must still be
    mailed, on one line."""
    data, _ = MessageBuilder(SENDER).build(mail(subject=f"line{breaker}separator"), NOW)
    assert parse(data)["Subject"] == "line separator"
