"""Email as bytes: the MIME message and every header of it, built by hand for one `Outgoing`.

Pure (no I/O; the time is passed in).  Each header reads back as exactly the text given, controls
and line separators made spaces first, so a subject can never start a header of its own; the
Message-ID is derived from the idempotency key, so a retry sends the same one, and `In-Reply-To`
and `References` name a per-thread root id.  `notifier.channels.smtp` sends what this builds.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import secrets
import urllib.parse
from email.utils import formatdate, parseaddr
from typing import TYPE_CHECKING

from notifier.errors import PermanentDeliveryError

if TYPE_CHECKING:
    from notifier.message import Attachment, Outgoing

# Header names the channel sets itself; `Outgoing.headers` may not repeat them.
_OWN_HEADERS = frozenset(
    {
        "from",
        "sender",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "auto-submitted",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
    }
)
_FIELD_NAME = re.compile(r"[!-9;-~]{1,60}")  # RFC 5322: printable ASCII except colon
_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"\\]+@[^\s@<>()\[\],;:\"\\]+")
_MAX_PATH = 254  # RFC 5321 §4.5.3.1.3: octets in an address, less its angle brackets
_ID_PART = re.compile(r"[A-Za-z0-9_+=-]+(?:\.[A-Za-z0-9_+=-]+)*")
# What no header holds: controls (C0 but tab, DEL, C1) and the line and paragraph separators.
_NOT_HEADER_TEXT = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]+")
_WHITE_SPACE = re.compile(r"([ \t]+)")
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")  # RFC 5322 atext
# RFC 2047 §5(3): what a Q-encoded word may hold as it is, anywhere; space is "_".
_Q_LITERAL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/"
_Q_BYTE = tuple(
    chr(octet) if octet in _Q_LITERAL else "_" if octet == 0x20 else f"={octet:02X}"
    for octet in range(256)
)
_EW_OVERHEAD = len("=?utf-8?q??=")
_EW_MAX = 75  # RFC 2047 §2: characters in an encoded word
_TOKEN = r"[!#$%&'*+.^_`{|}~0-9A-Za-z-]+"  # RFC 2045 token
_PARAMETER = re.compile(rf"{_TOKEN}=(?:{_TOKEN}|\"[ !#-\[\]-~]*\")")
_CONTENT_TYPE = re.compile(rf"({_TOKEN}/{_TOKEN})((?: *; *{_PARAMETER.pattern})*)")
_PLAIN_FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,59}")
_RFC2231_PIECE = re.compile(r"(?:%[0-9A-F]{2}|[^%]){1,20}")
# The octets a 7bit text part may hold: printable ASCII, tab and line breaks.
_SEVEN_BIT_TEXT = bytes(range(0x20, 0x7F)) + b"\t\r\n"
_CRLF = b"\r\n"
_MAX_LINE = 78  # RFC 5322 §2.1.1: header lines are folded to stay within this
_BASE64_LINE = 76  # RFC 2045 §6.8: encoded characters per line


# --- headers ------------------------------------------------------------------------------------
#
# Every header is written here, not by `email`: its header parser decodes anything that looks
# like an RFC 2047 encoded word in the value it is given, so a title of `=?utf-8?q?a=0D=0AB:?=`
# became a header of its own (and `=?utf-8?q?x?=` would show as `x`).  The rules that make a
# header read back as exactly the text written (after `_header_text`):
#
# - a word (a run of anything but space and tab) goes as it is only if it is printable ASCII,
#   holds no `=?`, and fits on a line (so headers are ASCII, SMTPUTF8 or not, but for an
#   address: a reader that does not expect UTF-8 headers reads them right too);
#   every other word is an encoded word, and so are leading and trailing white space and any
#   white space other than one space: adjacent encoded words take the white space between them
#   inside them, since decoders drop white space between encoded words;
# - lines fold only before a space and never right after the header name; each is at most 78
#   characters unless the name leaves no room for one character, and never over 998 octets.


def _header_text(value: str) -> str:
    """What any header holds of `value`: a run of controls (C0, DEL, C1) and line or paragraph
    separators (U+2028, U+2029) is one space, so nothing but a fold ever breaks a line."""
    return _NOT_HEADER_TEXT.sub(" ", value)


def _q_word(data: bytes) -> str:
    return "=?utf-8?q?" + "".join(_Q_BYTE[octet] for octet in data) + "?="


def _b_word(data: bytes) -> str:
    return "=?utf-8?b?" + binascii.b2a_base64(data, newline=False).decode("ascii") + "?="


class _Header:
    """One header's lines while they are written.  A token goes on the current line if the
    line stays within 78 characters, else on a new line that starts with its white space (a
    fold); the first token stays on the name's line, whatever its length."""

    def __init__(self, name: str) -> None:
        self.lines = [f"{name}:"]
        self.empty = True

    def room(self) -> int:
        """Characters left on the current line for one more token after a space."""
        return _MAX_LINE - len(self.lines[-1]) - 1

    def add(self, space: str, token: str) -> None:
        if self.empty or len(self.lines[-1]) + len(space) + len(token) <= _MAX_LINE:
            self.lines[-1] += space + token
        else:
            self.lines.append(space + token)
        self.empty = False

    def encode(self, text: str) -> None:
        """`text` as encoded words: Q or B, whichever is shorter for it, each as long as its
        line allows (at most 75 characters) and split only between characters."""
        if not text:
            return
        sizes = [len(char.encode("utf-8")) for char in text]  # a lone surrogate: ValueError
        data = text.encode("utf-8")
        q_sizes = [len(_Q_BYTE[octet]) for octet in data]
        q_lengths, offset = [], 0
        for size in sizes:
            q_lengths.append(sum(q_sizes[offset : offset + size]))
            offset += size
        use_q = sum(q_lengths) <= 4 * -(-len(data) // 3)
        start = offset = 0
        while start < len(text):
            room = min(self.room(), _EW_MAX) - _EW_OVERHEAD
            first = q_lengths[start] if use_q else 4 * -(-sizes[start] // 3)
            if room < first and not self.empty:
                room = min(_MAX_LINE - 1, _EW_MAX) - _EW_OVERHEAD  # on the next line
            end, length, octets = start + 1, q_lengths[start], sizes[start]
            while end < len(text):
                if use_q:
                    if length + q_lengths[end] > room:
                        break
                    length += q_lengths[end]
                elif 4 * -(-(octets + sizes[end]) // 3) > room:
                    break
                octets += sizes[end]
                end += 1
            chunk = text[start:end].encode("utf-8")
            self.add(" ", _q_word(chunk) if use_q else _b_word(chunk))
            start = end

    def folded(self) -> bytes:
        lines = [line.encode("utf-8") for line in self.lines]
        if max(map(len, lines)) > 998:
            raise ValueError(f"header {self.lines[0].partition(':')[0]} has a line over 998 octets")
        return _CRLF.join(lines) + _CRLF


def _plain_word(word: str) -> bool:
    """Whether a word can go into a header as it is (`word` holds no space or tab)."""
    return 0 < len(word) < _MAX_LINE and word.isascii() and word.isprintable() and "=?" not in word


def _unstructured(name: str, value: str) -> bytes:
    """`name: value` for free text (a subject): read back as `_header_text(value)`."""
    text = _header_text(value)
    if (
        text
        and text.isascii()
        and text.isprintable()
        and len(name) + 2 + len(text) <= _MAX_LINE
        and "=?" not in text
        and "  " not in text
        and text[:1] != " " != text[-1:]
    ):  # the usual subject: every word plain, all on one line
        return f"{name}: {text}\r\n".encode("ascii")
    parts = _WHITE_SPACE.split(text)  # word, white space, word, ..., word (maybe "")
    plain = [_plain_word(part) for part in parts]
    if plain[0] and len(name) + 2 + len(parts[0]) > _MAX_LINE:
        plain[0] = False  # too long for the name's line, and no fold may come before it
    for k in range(1, len(parts), 2):
        if parts[k] != " " or not parts[k - 1] or not parts[k + 1]:
            plain[k - 1] = plain[k + 1] = False  # this white space goes inside encoded words
    header = _Header(name)
    run: list[str] = []  # the text of the encoded words being gathered
    for k in range(0, len(parts), 2):
        if plain[k]:
            header.encode("".join(run))
            run = []
            header.add(" ", parts[k])
        elif run:
            run += (parts[k - 1], parts[k])
        else:
            run = [parts[k]]
    header.encode("".join(run))
    return header.folded()


def _phrase(name: str) -> str:
    """A display name as a phrase: atoms as they are, else a quoted string, else one encoded
    word (decoders differ on the white space between encoded words in a phrase)."""
    if "=?" not in name and all(_ATOM.fullmatch(word) for word in name.split(" ")):
        return name
    if name.isascii() and name.isprintable() and "=?" not in name:
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    data = name.encode("utf-8")
    word = _q_word(data) if len(_q_word(data)) <= len(_b_word(data)) else _b_word(data)
    if len(word) > _EW_MAX:
        raise ValueError(f"the display name {name!r} is too long to encode")
    return word


def _address_header(name: str, display: str, address: str) -> bytes:
    header = _Header(name)
    if display:
        header.add(" ", _phrase(display))
        header.add(" ", f"<{address}>")
    else:
        header.add(" ", address)
    return header.folded()


def _listed(name: str, value: str, separator: str = ", ") -> bytes:
    """`name: value`, folded only after each `separator`'s punctuation: message ids, RFC 2369
    `List-*` URLs and MIME parameters must reach the reader exactly as written."""
    items = value.split(separator)
    lines = [f"{name}: {items[0]}"]
    for item in items[1:]:
        if len(lines[-1]) + len(separator) + len(item) <= _MAX_LINE:
            lines[-1] += separator + item
        else:
            lines[-1] += separator.rstrip(" ")
            lines.append(" " + item)
    if max(map(len, lines)) > 998:
        raise ValueError(f"header {name} has a line over 998 octets")
    return "\r\n".join(lines).encode("ascii") + _CRLF


def _other(name: str, value: str) -> bytes:
    """A header of `Outgoing.headers`: a value of printable ASCII words (a `List-Unsubscribe`
    URL list) as it is, folded after its commas; any other text (or a word too long for one
    line) as a subject would be."""
    text = _header_text(value)
    if (
        text
        and text.isascii()
        and text.isprintable()
        and "=?" not in text
        and "  " not in text
        and text[:1] != " " != text[-1:]
        and max(map(len, text.split(", "))) < 998 - len(name) - 3
    ):
        return _listed(name, text)
    return _unstructured(name, text)


# Constant headers.
_AUTO = b"Auto-Submitted: auto-generated\r\n"
_MIME_VERSION = b"MIME-Version: 1.0\r\n"
_PLAIN = b'Content-Type: text/plain; charset="utf-8"\r\n'
_HTML = b'Content-Type: text/html; charset="utf-8"\r\n'
_SEVEN_BIT = b"Content-Transfer-Encoding: 7bit\r\n"
_BASE64 = b"Content-Transfer-Encoding: base64\r\n"


def _id_part(value: str) -> str:
    """`value` if it can stand left of the @ in a message id, else a digest of it."""
    if len(value) <= 40 and _ID_PART.fullmatch(value):
        return value
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class MessageBuilder:
    """Builds the bytes of one email for one `Outgoing`.  Pure apart from the `now` it is given."""

    def __init__(self, sender: str) -> None:
        display, address = parseaddr(_header_text(sender))
        if not _ADDRESS.fullmatch(address) or not address.isascii() or "=?" in address:
            raise ValueError(f"not a usable sender address: {sender!r}")
        self.envelope_sender = address
        self.domain = address.rpartition("@")[2]
        self._from = _address_header("From", display, address)

    def message_id(self, key: str) -> str:
        return f"<renga.{_id_part(key)}@{self.domain}>"

    def thread_id(self, thread: str) -> str:
        return f"<renga.event.{_id_part(thread)}@{self.domain}>"

    def build(self, message: Outgoing, now: float) -> tuple[bytes, bool]:
        """The message's bytes, and whether sending them needs SMTPUTF8.  A message that cannot
        be built never will be: `PermanentDeliveryError`."""
        try:
            return self._build(message, now)
        except (ValueError, TypeError) as error:
            raise PermanentDeliveryError(f"cannot build the message: {error}") from error

    def _build(self, message: Outgoing, now: float) -> tuple[bytes, bool]:
        recipient = message.recipient
        if not (
            _ADDRESS.fullmatch(recipient)
            and recipient.isprintable()
            and "=?" not in recipient  # a reader would decode it into another address
            and len(recipient.encode("utf-8")) <= _MAX_PATH
        ):
            raise PermanentDeliveryError(f"not an email address: {recipient!r}")
        utf8 = not recipient.isascii()
        body = _text_part(_PLAIN, message.text)
        if message.html is not None:
            body = _multipart("alternative", [body, _text_part(_HTML, message.html)])
        if message.attachments:
            parts = [body, *(_attachment(a) for a in message.attachments)]
            body = _multipart("mixed", parts)
        headers = [
            self._from,
            _address_header("To", "", recipient),
            _unstructured("Subject", message.subject),
            f"Date: {formatdate(now)}\r\n".encode("ascii"),
            _listed("Message-ID", self.message_id(message.key)),
        ]
        if message.thread is not None:
            root = self.thread_id(message.thread)
            headers.append(_listed("In-Reply-To", root))
            headers.append(_listed("References", root))
        headers.append(_AUTO)
        seen: set[str] = set()
        for name, value in message.headers:
            key = name.lower()
            if not _FIELD_NAME.fullmatch(name) or key in _OWN_HEADERS or key in seen:
                raise PermanentDeliveryError(f"header {name!r} may not be set")
            seen.add(key)
            headers.append(_other(name, value))
        headers.append(_MIME_VERSION)
        headers.append(body)
        data = b"".join(headers)
        if not data.endswith(_CRLF):  # a 7bit text with no final line break: as aiosmtplib would
            data += _CRLF
        return data, utf8


def _crlf(data: bytes) -> bytes:
    """Every line break (CR, LF or CRLF) as CRLF."""
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return data.replace(b"\n", _CRLF)


def _base64(data: bytes) -> bytes:
    """Base64 in lines of 76 characters, each ending in CRLF; nothing for no data."""
    encoded = binascii.b2a_base64(data, newline=False)
    lines = [encoded[i : i + _BASE64_LINE] for i in range(0, len(encoded), _BASE64_LINE)]
    return _CRLF.join(lines) + _CRLF if lines else b""


def _text_part(content_type: bytes, text: str) -> bytes:
    """A UTF-8 text part, headers and body: as is when it is short-lined ASCII, else base64
    (C-fast, unlike quoted-printable, and safe through any relay)."""
    data = text.encode("utf-8")
    if (
        data.isascii()
        and not data.translate(None, _SEVEN_BIT_TEXT)  # nothing left: no controls
        and max(map(len, data.splitlines()), default=0) <= 998
    ):
        return content_type + _SEVEN_BIT + _CRLF + _crlf(data)
    canonical = _crlf(data)  # RFC 2046: CRLF line breaks, the last line ended too
    if not canonical.endswith(_CRLF):
        canonical += _CRLF
    return content_type + _BASE64 + _CRLF + _base64(canonical)


def _multipart(subtype: str, parts: list[bytes]) -> bytes:
    """A multipart with a random boundary: unguessable, so no part can contain it, and
    nothing need search the parts for it."""
    boundary = f"=_{secrets.token_hex(12)}"
    head = f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n--{boundary}\r\n'
    delimiter = f"\r\n--{boundary}\r\n"
    close = f"\r\n--{boundary}--\r\n"
    return head.encode("ascii") + delimiter.encode("ascii").join(parts) + close.encode("ascii")


def _attachment(attachment: Attachment) -> bytes:
    """Base64 with the full content type, parameters included (`text/calendar;
    method=REQUEST` is what makes calendars offer to add an invitation), and the file name
    quoted if it is a plain one, else RFC 2231-encoded (percent-encoded UTF-8, never decoded
    as anything else)."""
    match = _CONTENT_TYPE.fullmatch(attachment.content_type)
    if match is None or "=?" in attachment.content_type:
        raise PermanentDeliveryError(f"not a content type: {attachment.content_type!r}")
    content_type = "; ".join([match[1], *_PARAMETER.findall(match[2])])
    disposition = ["attachment"]
    filename = _header_text(attachment.filename).strip()  # readers strip it: so do we
    if _PLAIN_FILENAME.fullmatch(filename):
        disposition.append(f'filename="{filename}"')
    elif filename:
        encoded = urllib.parse.quote(filename.encode("utf-8"), safe="")  # ValueError: surrogate
        pieces = _RFC2231_PIECE.findall(encoded)
        if len(pieces) == 1:
            disposition.append(f"filename*=utf-8''{encoded}")
        else:
            disposition.append(f"filename*0*=utf-8''{pieces[0]}")
            disposition += (f"filename*{n}*={piece}" for n, piece in enumerate(pieces[1:], 1))
    return (
        _listed("Content-Type", content_type, "; ")
        + _listed("Content-Disposition", "; ".join(disposition), "; ")
        + _BASE64
        + _CRLF
        + _base64(attachment.data)
    )
