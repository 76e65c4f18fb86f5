"""No token or token hash reaches the log, however a login or operator line is spelt.

Pure: the received line goes through `redact_secrets` (as the connection does before logging
it) and every record through `format_records` (as the log thread does).
"""

from __future__ import annotations

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from herd.traffic import format_records
from herd.wire.grammar import redact_secrets

WHEN = 1_700_000_000.25
WHO = "127.0.0.1:5"
GAPS = [b" ", b"\t", b"\x0b", b"\x0c", b"\r", b"\x1c", b"\x1f", b"\xc2\xa0", b"\xe2\x80\x83"]
FIELD = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.=@", min_size=1)
TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=6)


def logged(line: bytes) -> bytes:
    """What the log holds for `line` received, and for its echo `? <line>` sent."""
    return format_records(
        b"Bailey",
        [(WHEN, "recv", WHO, redact_secrets(line)), (WHEN, "sent", WHO, b"? " + line + b"\n")],
    )


@st.composite
def secret_lines(draw: st.DrawFn) -> tuple[bytes, bytes, list[bytes]]:
    """A line whose first field is AUTH/USER-ADD/USER-TOKEN in some case, with a secret after
    the user field (or as the only field after the word), arbitrary gaps and extra fields."""
    word = "".join(
        char.upper() if upper else char.lower()
        for char, upper in zip(
            draw(st.sampled_from(["auth", "user-add", "user-token"])),
            draw(st.lists(st.booleans(), min_size=10, max_size=10)),
            strict=False,
        )
    ).encode()
    secret = draw(TOKEN).encode()
    if draw(st.booleans()):
        secret = b"scrypt$1024$8$1$" + secret
    others = [field.encode() for field in draw(st.lists(FIELD, max_size=4))]
    after = [secret] if not others else [others[0], *others[1:]]
    if others:
        after.insert(draw(st.integers(1, len(after))), secret)
    gaps = st.lists(st.sampled_from(GAPS), min_size=1, max_size=3).map(b"".join)
    line = draw(st.sampled_from([b"", *GAPS])) + word
    for field in after:
        line += draw(gaps) + field
    line += draw(st.sampled_from([b"", *GAPS]))
    return line, secret, [word, *others]


@given(secret_lines())
@example((b"\tAUTH carol sEcReTtOkEn x", b"sEcReTtOkEn", [b"AUTH", b"carol", b"x"]))
@example((b"AUTH sEcReTtOkEn", b"sEcReTtOkEn", [b"AUTH"]))
@example((b"auth bob sEcReTtOkEn", b"sEcReTtOkEn", [b"auth", b"bob"]))
def test_no_spelling_of_a_login_shows_its_secret(case: tuple[bytes, bytes, list[bytes]]) -> None:
    line, secret, others = case
    assume(not any(secret in other for other in others))
    assume(secret not in format_records(b"Bailey", [(WHEN, "recv", WHO, b"<redacted>")]))
    text = logged(line)
    assert secret not in text
    assert text.count(b"<redacted>") == 2


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        (b"AUTH alice tok", b"AUTH alice <redacted>"),
        (b"\tAUTH carol tok x", b"AUTH carol <redacted>"),
        (b"AUTH tok", b"AUTH <redacted>"),
        (b"auth bob tok", b"auth bob <redacted>"),
        (b"USER-ADD bob scrypt$1$2 email=b@example.org", b"USER-ADD bob <redacted>"),
        (b"user-token bob scrypt$1$2", b"user-token bob <redacted>"),
        (b"OPTOUT bob uAPH2Ty2ax7usQ6TNkTbjg", b"OPTOUT bob <redacted>"),
        (b"optout uAPH2Ty2ax7usQ6TNkTbjg", b"optout <redacted>"),
        (b"AUTH", b"AUTH"),
        (b"AUTHOR x y", b"AUTHOR x y"),
        (b"IAMAT auth +1+1 1", b"IAMAT auth +1+1 1"),
    ],
)
def test_what_a_secret_line_shows(line: bytes, shown: bytes) -> None:
    assert redact_secrets(line) == shown
    assert logged(line).splitlines()[1].endswith(b" sent " + WHO.encode() + b" ? " + shown)
