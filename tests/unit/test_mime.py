"""MessageBuilder's bytes: parsed back with the stdlib, and compared with a reference built the
way the channel used to build them (`EmailMessage` and its generator, kept here only).

The builder writes MIME directly and skips the header parser for short printable ASCII
values; the property test checks that for any input it writes exactly what the stdlib would
(boundaries aside), as sent over SMTP, and that no input can add a header or a line over 998
octets.
"""

from __future__ import annotations

import base64
import email
import email.errors
import email.policy
import hashlib
import re
import secrets
from email.headerregistry import BaseHeader, UnstructuredHeader
from email.message import EmailMessage
from email.policy import Policy
from email.utils import formatdate, parseaddr

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.channels import Attachment, Outgoing, PermanentDeliveryError
from notifier.channels.smtp import MessageBuilder

SENDER = "Renga Bot <renga@example.org>"
NOW = 1_700_000_000.0
ICS = b"BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n"
UNSUBSCRIBE = (
    "<https://renga.example.org/unsubscribe?token=" + "t" * 90 + ">, <mailto:u@example.org>"
)
BOUNDARY = re.compile(rb"=_[0-9a-f]{24}")


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


# --- the reference: how the channel built messages with the stdlib generator -------------------

_REF_ASCII = email.policy.SMTP.clone(cte_type="7bit")
_REF_UTF8 = _REF_ASCII.clone(utf8=True)
_REF_OWN = {
    *("from", "sender", "to", "cc", "bcc", "subject", "date", "message-id", "in-reply-to"),
    *("references", "auto-submitted", "mime-version", "content-type"),
    *("content-transfer-encoding", "content-disposition"),
}
_REF_FIELD_NAME = re.compile(r"[!-9;-~]+")
_REF_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"\\]+@[^\s@<>()\[\],;:\"\\]+")
_REF_ID_PART = re.compile(r"[A-Za-z0-9_+=-]+(?:\.[A-Za-z0-9_+=-]+)*")
_REF_LINE_BREAKS = re.compile(r"[\r\n\x00-\x08\x0b-\x1f\x7f\x85\u2028\u2029]+")
_REF_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class _RefVerbatim(UnstructuredHeader, BaseHeader):
    def fold(self, *, policy: Policy) -> str:
        value = str(self)
        if not value.isascii():
            return super().fold(policy=policy)
        items = value.split(", ")
        lines = [f"{self.name}: {items[0]}"]
        for item in items[1:]:
            if len(lines[-1]) + 2 + len(item) <= 78:
                lines[-1] += f", {item}"
            else:
                lines[-1] += ","
                lines.append(f" {item}")
        if max(map(len, lines)) > 998:
            raise ValueError(f"header {self.name} has a line longer than 998 characters")
        return policy.linesep.join(lines) + policy.linesep


def _ref_one_line(value: str) -> str:
    return _REF_LINE_BREAKS.sub(" ", value)


def _ref_id(prefix: str, value: str, domain: str) -> str:
    if not (len(value) <= 40 and _REF_ID_PART.fullmatch(value)):
        value = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"<renga.{prefix}{value}@{domain}>"


def _ref_text(policy: Policy, content_type: str, text: str) -> EmailMessage:
    part = EmailMessage(policy=policy)
    part["Content-Type"] = content_type
    data = text.encode("utf-8")
    if (
        data.isascii()
        and not _REF_CONTROLS.search(text)
        and max(map(len, data.splitlines()), default=0) <= 998
    ):
        part["Content-Transfer-Encoding"] = "7bit"
        part.set_payload(text)
    else:
        part["Content-Transfer-Encoding"] = "base64"
        canonical = b"\r\n".join(data.splitlines()) + b"\r\n"
        part.set_payload(base64.encodebytes(canonical).decode("ascii"))
    return part


def _ref_multipart(policy: Policy, subtype: str, parts: list[EmailMessage]) -> EmailMessage:
    mail = EmailMessage(policy=policy)
    mail["Content-Type"] = f'multipart/{subtype}; boundary="=_{secrets.token_hex(12)}"'
    for part in parts:
        mail.attach(part)
    return mail


def _ref_attachment(policy: Policy, attachment: Attachment) -> EmailMessage:
    content_type = _ref_one_line(attachment.content_type)
    maintype, slash, subtype = content_type.partition(";")[0].strip().partition("/")
    if not (slash and _REF_FIELD_NAME.fullmatch(maintype) and _REF_FIELD_NAME.fullmatch(subtype)):
        raise PermanentDeliveryError("not a content type")
    part = EmailMessage(policy=policy)
    part["Content-Type"] = content_type
    part["Content-Disposition"] = "attachment"
    part.set_param("filename", _ref_one_line(attachment.filename), header="Content-Disposition")
    part["Content-Transfer-Encoding"] = "base64"
    part.set_payload(base64.encodebytes(attachment.data).decode("ascii"))
    return part


def reference_build(sender: str, message: Outgoing, now: float) -> tuple[bytes, bool]:
    """The stdlib build, as sent: aiosmtplib ends the data with a line break if it has none."""
    try:
        data, utf8 = _reference_build(sender, message, now)
    except (ValueError, TypeError, email.errors.MessageError) as error:
        raise PermanentDeliveryError(str(error)) from error
    return data if data.endswith(b"\r\n") else data + b"\r\n", utf8


def _reference_build(sender: str, message: Outgoing, now: float) -> tuple[bytes, bool]:
    domain = parseaddr(sender)[1].rpartition("@")[2]
    recipient = message.recipient
    if not _REF_ADDRESS.fullmatch(recipient):
        raise PermanentDeliveryError("not an email address")
    utf8 = not recipient.isascii()
    policy = _REF_UTF8 if utf8 else _REF_ASCII
    body = _ref_text(policy, 'text/plain; charset="utf-8"', message.text)
    if message.html is not None:
        html = _ref_text(policy, 'text/html; charset="utf-8"', message.html)
        body = _ref_multipart(policy, "alternative", [body, html])
    if message.attachments:
        parts = [body, *(_ref_attachment(policy, a) for a in message.attachments)]
        body = _ref_multipart(policy, "mixed", parts)
    mail = EmailMessage(policy=policy)
    mail["From"] = _REF_ASCII.header_factory("From", _ref_one_line(sender))
    mail["To"] = recipient
    mail["Subject"] = _ref_one_line(message.subject)
    mail["Date"] = formatdate(now)
    mail["Message-ID"] = _RefVerbatim("Message-ID", _ref_id("", message.key, domain))
    if message.thread is not None:
        root = _ref_id("event.", message.thread, domain)
        mail["In-Reply-To"] = _RefVerbatim("In-Reply-To", root)
        mail["References"] = _RefVerbatim("References", root)
    mail["Auto-Submitted"] = "auto-generated"
    for name, value in message.headers:
        if not _REF_FIELD_NAME.fullmatch(name) or name.lower() in _REF_OWN:
            raise PermanentDeliveryError("header may not be set")
        mail[name] = _RefVerbatim(name, _ref_one_line(value))
    mail["MIME-Version"] = "1.0"
    for name, value in body.items():
        mail[name] = value
    mail.set_payload(body.get_payload())
    return mail.as_bytes(), utf8


def same_boundaries(data: bytes) -> bytes:
    """`data` with its random boundaries named by their order of appearance."""
    names: dict[bytes, bytes] = {}
    return BOUNDARY.sub(lambda m: names.setdefault(m[0], b"=_boundary%d" % len(names)), data)


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


def test_a_non_ascii_recipient_gets_raw_utf8_headers() -> None:
    builder = MessageBuilder("Rengä <renga@example.org>")
    data, utf8 = builder.build(mail("jöran@example.org", subject="Réunion samedi"), NOW)
    assert utf8
    assert "To: jöran@example.org\r\n".encode() in data
    assert "Subject: Réunion samedi\r\n".encode() in data
    assert "From: Rengä <renga@example.org>\r\n".encode() in data
    got = parse(data)
    assert got["Subject"] == "Réunion samedi"

    data, utf8 = builder.build(mail(subject="Réunion samedi"), NOW)
    assert not utf8 and data.isascii()  # RFC 2047 encoded words instead
    got = parse(data)
    assert (got["Subject"], got["From"]) == ("Réunion samedi", "Rengä <renga@example.org>")


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


# --- the property ------------------------------------------------------------------------------

_TRICKY = (
    "=?utf-8?q?x?=",
    "=?utf-8?b?w6k=?=",
    "=?",
    "?=",
    ", ",
    "\r\n",
    "\n",
    "\r",
    "\t",
    "\x00",
    "\x0b",
    "\x1c",
    "\x85",
    "\u2028",
    " ",
    "é",
    "日本",
    "\U0001f600",
    "x" * 80,
    "y" * 1000,
    "<https://example.org/u?t=1>",
)
_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
_CHARS = st.one_of(st.characters(max_codepoint=0x7F), st.characters())  # ASCII more often
_PIECES = st.one_of(st.sampled_from(_TRICKY), st.text(_CHARS, max_size=30))
_ASCII_PIECES = st.one_of(
    st.sampled_from(["\n", "\r\n", "\r", "\t", "\x0b", "\x7f", "=?", "x" * 990]),
    st.text(_PRINTABLE, max_size=60),
)
_TEXT = st.one_of(
    st.lists(_PIECES, max_size=8).map("".join),
    st.lists(_ASCII_PIECES, max_size=8).map("".join),  # 7bit, or base64 for a reason
    st.text(_PRINTABLE, min_size=60, max_size=80),  # about where headers fold
)
# Now and then with a lone surrogate of the kind a header encodes as unknown-8bit (or refuses,
# next to other non-ASCII characters).
_HEADER = st.one_of(
    _TEXT, _TEXT, _TEXT, st.lists(st.one_of(_PIECES, st.just("\udc80")), max_size=8).map("".join)
)
_RECIPIENTS = st.one_of(
    st.sampled_from(
        [
            "alice@example.org",
            "jöran@example.org",
            "a..b@x.org",
            "=?utf-8?q?a?=@x.org",
            "a!#$%&'*+/=?^_`{|}~-@x.org",
            "a\x01b@x.org",
            "l" * 80 + "@example.org",
            "not an address",
        ]
    ),
    st.from_regex(r"[^\s@<>()\[\],;:\"\\]+@[^\s@<>()\[\],;:\"\\]+", fullmatch=True),
    st.from_regex(r"[a-z0-9.+=-]{1,70}@[a-z0-9.-]{1,20}", fullmatch=True),
)
_NAMES = st.sampled_from(
    ["List-Unsubscribe", "List-Unsubscribe-Post", "List-Id", "X-Note", "Keywords", "Reply-To"]
)
_CONTENT_TYPES = st.sampled_from(
    [
        "text/calendar; method=REQUEST",
        "application/pdf",
        'text/plain; name="é"',
        "x/y; a=" + "b" * 90,
    ]
)
_MESSAGES = st.builds(
    Outgoing,
    key=_TEXT,
    channel=st.just("email"),
    recipient=_RECIPIENTS,
    subject=_HEADER,
    text=_TEXT,
    html=st.none() | _TEXT,
    thread=st.none() | _TEXT,
    headers=st.lists(st.tuples(_NAMES, _HEADER), max_size=3).map(tuple),
    attachments=st.lists(st.builds(Attachment, _TEXT, _CONTENT_TYPES, st.binary()), max_size=2).map(
        tuple
    ),
)


@settings(max_examples=400, deadline=None)
@given(_MESSAGES, st.floats(min_value=0, max_value=4e9))
def test_the_builder_writes_what_the_stdlib_would(message: Outgoing, now: float) -> None:
    try:
        expected, expected_utf8 = reference_build(SENDER, message, now)
    except PermanentDeliveryError:
        with pytest.raises(PermanentDeliveryError):
            MessageBuilder(SENDER).build(message, now)
        return
    data, utf8 = MessageBuilder(SENDER).build(message, now)
    assert utf8 == expected_utf8
    assert same_boundaries(data) == same_boundaries(expected)

    lines = data.split(b"\r\n")
    assert lines.pop() == b""  # every line ends in CRLF
    assert all(b"\r" not in line and b"\n" not in line and len(line) <= 998 for line in lines)
    assert utf8 or data.isascii()

    got = parse(data)  # no header of its own for any value, whatever it holds
    names = ["from", "to", "subject", "date", "message-id"]
    if message.thread is not None:
        names += ["in-reply-to", "references"]
    names += ["auto-submitted", *(name.lower() for name, _ in message.headers), "mime-version"]
    names += ["content-type"]
    if message.html is None and not message.attachments:
        names += ["content-transfer-encoding"]
    assert list(map(str.lower, got.keys())) == names  # keys(): values unparsed
    subject = _ref_one_line(message.subject)
    if subject.isascii() and subject.isprintable() and "=?" not in subject and len(subject) < 70:
        assert got["Subject"] == subject.lstrip(" ")  # one line; the parser drops leading blanks


@pytest.mark.parametrize("breaker", ["\u2028", "\u2029", "\x85"])
def test_unicode_line_breaks_in_a_subject_become_spaces(breaker: str) -> None:
    """The email policy takes them for line breaks and would refuse the header: a title that
    holds one must still be mailed."""
    data, _ = MessageBuilder(SENDER).build(mail(subject=f"line{breaker}separator"), NOW)
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed["Subject"] == "line separator"
