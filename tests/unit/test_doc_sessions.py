"""The doc example parser and matcher (tests/support/doc_sessions.py)."""

from __future__ import annotations

import pytest

from tests.support.doc_sessions import (
    Action,
    Bindings,
    DocFormatError,
    Expect,
    HalfClose,
    Note,
    Send,
    ServerCloses,
    Session,
    ShellSession,
    match,
    parse_examples,
)

DOC = """# Title

## 1. Framing

```
IAMAT <client> <position> <time>
```

<!-- server: Bona -->
```
> b'  IAMAT\\tlemon +51.5072-0.1276 1\\r\\n'
> STATUS
> XXXX…X    (12 bytes)
> b'IAMAT lemon'
(client half-closes)
< AT Bona +1.000000000 lemon +51.5072-0.1276 1
<
< b'? IAMAT lemon\\r\\n'
(server closes)
> WHOAMI
(0.5 s later)
(alice sends PLAN Lunch)
< USER {"id":"alice",…}
```

```console
$ herd user add alice
user alice: token Zc9KMPFRgWwDHS2jhWQsOUYFPPKi1WFIV5VxDeCze14

$ herd status
Bailey  12001  up
```

```python
print("not an example")
```
"""


def test_parse_examples_in_order_with_markers_headings_and_split_sessions() -> None:
    found = parse_examples(DOC, "doc.md")
    assert [type(item) for item in found] == [Session, Session, ShellSession]
    first, second, shell = found
    assert isinstance(first, Session) and isinstance(second, Session)
    assert first.markers == {"server": "Bona"} and first.heading == "1. Framing"
    assert first.where == "doc.md:10 (1. Framing)"
    assert first.steps == (
        Send(b"  IAMAT\tlemon +51.5072-0.1276 1\r\n"),
        Send(b"STATUS\n"),
        Send(b"X" * 12 + b"\n"),
        Send(b"IAMAT lemon"),
        HalfClose(),
        Expect(b"AT Bona +1.000000000 lemon +51.5072-0.1276 1\n"),
        Expect(b"\n"),
        Expect(b"? IAMAT lemon\r\n"),
        ServerCloses(),
    )
    assert second.steps == (
        Send(b"WHOAMI\n"),
        Note("0.5 s later"),
        Action("alice", b"PLAN Lunch"),
        Expect('USER {"id":"alice",…}\n'.encode()),
    )
    assert isinstance(shell, ShellSession)
    assert [(c.command, c.output) for c in shell.commands] == [
        (
            "herd user add alice",
            ("user alice: token Zc9KMPFRgWwDHS2jhWQsOUYFPPKi1WFIV5VxDeCze14", ""),
        ),
        ("herd status", ("Bailey  12001  up",)),
    ]


def test_a_block_that_breaks_the_format_is_an_error_not_a_skip() -> None:
    with pytest.raises(DocFormatError, match="bytes literal"):
        parse_examples("```\n> b'open\n```\n")
    with pytest.raises(DocFormatError, match="starts with"):
        parse_examples("```console\nmake up\n```\n")


def test_wildcard_matches_any_text_within_the_expected_line() -> None:
    assert match('USER {"id":"bob",…}\n', b'USER {"id":"bob","jid":null}\n') is None
    assert match("< …", b"< anything at all") is None
    mismatch = match('USER {"id":"bob",…}\n', b'USER {"id":"alice"}\n')
    assert mismatch is not None and "does not match" in str(mismatch)
    assert match("exact\n", b"exact") is not None  # the terminator counts


def test_varying_values_bind_once_and_then_stand_for_what_was_seen() -> None:
    bindings = Bindings()
    doc = 'EVENT {"id":"Bailey.e3ce36.19","title":"x"}\n'
    assert match(doc, b'EVENT {"id":"Bailey.7a01ff.23","title":"x"}\n', bindings) is None
    assert bindings.values == {b"Bailey.e3ce36.19": b"Bailey.7a01ff.23"}
    # the same doc id must be the same real id from now on ...
    assert match("ERR x: Bailey.e3ce36.19\n", b"ERR x: Bailey.7a01ff.24\n", bindings) is not None
    # ... and another doc id cannot be that one
    clash = match("ERR x: Bailey.e3ce36.20\n", b"ERR x: Bailey.7a01ff.23\n", bindings)
    assert clash is not None and "already" in str(clash)
    # the server name is not a varying part
    assert match("Bona.e3ce36.1\n", b"Bailey.e3ce36.1\n") is not None
    assert bindings.substitute(b"VOTE Bailey.e3ce36.19 Bailey.e3ce36.20 YES\n") == (
        b"VOTE Bailey.7a01ff.23 Bailey.e3ce36.20 YES\n"
    )


def test_a_failed_match_binds_nothing() -> None:
    bindings = Bindings()
    assert match("A Bailey.e3ce36.1 B\n", b"A Bailey.aaaaaa.1 C\n", bindings) is not None
    assert bindings.values == {}


def test_one_doc_value_twice_in_a_line_must_be_one_value() -> None:
    doc = "AT Bailey +0.267841094 k 1\nAT Bailey +0.267841094 k 1\n"
    assert match(doc, b"AT Bailey +5.000000001 k 1\nAT Bailey +5.000000001 k 1\n") is None
    assert match(doc, b"AT Bailey +5.000000001 k 1\nAT Bailey +5.000000002 k 1\n") is not None


@pytest.mark.parametrize(
    ("doc", "received"),
    [
        (
            "user bob: token i6Mu6mk2ADucTnyiD9POX3lLwIb1zPgSJN5g3kmRFkQ",
            b"user bob: token " + b"a-_" * 14 + b"Z",
        ),
        (
            "SUBSCRIBED bob 01795493797090161462.08556ab6494ca135cc07baa4aaa4a4b6",
            b"SUBSCRIBED bob 01800000000000000000.ffffffffffffffffffffffffffffffff",
        ),
        ("AT Bailey -65.905471103 lemon", b"AT Bailey +1.000000000 lemon"),
        (
            "HERD-CHALLENGE 97deb5bed26d765a89dbe32d9bad0224 " + "7" * 64,
            b"HERD-CHALLENGE " + b"0" * 32 + b" " + b"a" * 64,
        ),
        ("LINKCODE 7k2m9qxd 1796000000", b"LINKCODE abcdefgh 1800000600"),
        ('"at":"2026-11-24T04:16:32Z","text":"hi"', b'"at":"2031-01-01T00:00:00Z","text":"hi"'),
        ("Bailey     12001  up", b"Bailey     40123  up"),
    ],
)
def test_each_varying_kind(doc: str, received: bytes) -> None:
    assert match(doc, received) is None


def test_what_does_not_vary_is_compared_exactly() -> None:
    # positions and report times are not diffs; option times are not comment times
    assert (
        match(
            "AT Bailey +1.000000000 k +34.068930-118.445127 1\n",
            b"AT Bailey +2.000000000 k +34.068930-118.445128 1\n",
        )
        is not None
    )
    assert (
        match('"at":"2030-12-05T18:00:00Z","by":"bob"', b'"at":"2030-12-05T18:00:01Z","by":"bob"')
        is not None
    )
    assert match("PLAN 12006\n", b"PLAN 40000\n") is not None
