"""The XMPP channel's own stanza serializer against the XML 1.0 spec and slixmpp's serializer.

The channel writes deliveries as text (``send_raw``) instead of building them with slixmpp; these
tests hold it to what slixmpp would have written, minus the characters XML forbids. The oracles
are the spec's ``Char`` production and a real (unconnected) slixmpp client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slixmpp import JID, ClientXMPP
from slixmpp.xmlstream.tostring import tostring

from notifier.stanza import NOT_XML, chat_stanza, posix_time, xml_attr, xml_text

EVERY_CHARACTER = "".join(map(chr, range(0x110000)))
AWKWARD = ["\x00", "\x01", "\x1f", "\x7f", "\x85", "\ud800", "\udfff", "\ufffe", "\uffff"]
AWKWARD += ["&", "<", ">", '"', "'", "]]>", "\t", "\n", "\r\n", "\U0001f355", "\U0010ffff"]
texts = st.lists(st.one_of(st.characters(), st.sampled_from(AWKWARD))).map("".join)


def xml_char(c: str) -> bool:
    """XML 1.0 (fifth edition) ``Char``."""
    code = ord(c)
    return (
        c in "\t\n\r"
        or 0x20 <= code <= 0xD7FF
        or 0xE000 <= code <= 0xFFFD
        or 0x10000 <= code <= 0x10FFFF
    )


def clean(text: str) -> str:
    return "".join(c for c in text if xml_char(c))


def test_both_filters_drop_exactly_what_xml_forbids() -> None:
    assert NOT_XML.sub("", EVERY_CHARACTER) == clean(EVERY_CHARACTER)
    assert xml_text(EVERY_CHARACTER) == escape(clean(EVERY_CHARACTER)).encode()


def test_attributes_escape_quotes() -> None:
    assert xml_attr("a\"b'c<d>e&f\x01") == b"a&quot;b'c&lt;d&gt;e&amp;f"


@pytest.fixture(scope="module")
def slixmpp_client() -> Iterator[ClientXMPP]:
    loop = asyncio.new_event_loop()
    client = ClientXMPP("renga@localhost/Bailey", "unused", loop=loop)
    client.register_plugin("xep_0184")
    yield client
    loop.close()


def tree(element: ET.Element) -> tuple[object, ...]:
    return (element.tag, element.attrib, element.text, [tree(child) for child in element])


@settings(deadline=None)
@given(text=texts, thread=st.one_of(st.none(), texts), key=texts.map(clean).filter(bool))
def test_deliveries_parse_as_slixmpp_would_have_built_them(
    slixmpp_client: ClientXMPP, text: str, thread: str | None, key: str
) -> None:
    to = JID("Bob@LocalHost/phone \"<&'>")
    ours = chat_stanza(
        xml_attr(to.full),
        xml_attr(key),
        xml_text(text),
        xml_text(thread) if thread else b"",
        b' xml:lang="en"',
    )
    theirs = slixmpp_client.make_message(mto=to, mbody=clean(text), mtype="chat")
    theirs["id"] = key
    if thread and clean(thread):
        theirs["thread"] = clean(thread)
    theirs["request_receipt"] = True
    expected = tostring(theirs.xml, xmlns=slixmpp_client.default_ns, top_level=True)
    assert tree(ET.fromstring(ours)) == tree(ET.fromstring(expected))


def test_xep_0082_times_are_read_as_posix_seconds_utc_unless_an_offset_is_given() -> None:
    assert posix_time("2026-12-06T14:00:00Z") == 1796565600.0
    assert posix_time(" 2026-12-06T14:00:00 ") == 1796565600.0
    assert posix_time("2026-12-06T15:00:00+01:00") == 1796565600.0
    assert posix_time("2026-12-06T14:00:00.250Z") == 1796565600.25


@pytest.mark.parametrize("text", [None, "", "yesterday", "2026-13-01T00:00:00Z"])
def test_an_unusable_xep_0082_time_is_none(text: str | None) -> None:
    assert posix_time(text) is None
