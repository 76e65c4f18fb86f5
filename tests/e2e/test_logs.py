"""What a real `herd run` process writes about what it receives, and what it does when it
cannot write: tokens never in clear, logs bounded in size and rate, a full disk stops the
server with a message instead of hanging it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Client, Herd, running_herd, wait_until

TOKEN = b"Zc9KMPFRgWwDHS2jhWQsOUYFPPKi1WFIV5VxDeCze14"
HASH = b"scrypt$1024$8$1$031c6c7fd3cfdf9779cf1055de110d47$eceedd6bf8e9a3e77415c0f3"


@pytest.fixture
def lone(tmp_path: Path, places_seed: Path) -> Iterator[Herd]:
    """One server of its own, no peers, not started."""
    with running_herd(tmp_path, names=("Bailey",), links=(), seed=places_seed) as herd:
        yield herd


@pytest.mark.timeout(60)
def test_no_malformed_login_puts_its_token_in_the_log(lone: Herd) -> None:
    lone.up()
    lines = [
        b"\tAUTH carol " + TOKEN + b" x",
        b"AUTH " + TOKEN,
        b"auth carol " + TOKEN,
        b"Auth\x0bcarol\x0c" + TOKEN + b"\r",
        b"USER-ADD bob " + HASH + b" email=bob@example.org",
        b"user-token bob " + HASH,
        b"STATUS",
    ]
    with Client(lone.port("Bailey")) as client:
        client.send(b"".join(line + b"\n" for line in lines))
        for line in lines[:-1]:
            assert client.line().startswith(b"? "), line
        assert client.line().startswith(b"STATUS ")
    wait_until(
        lambda: re.search(rb"sent \S+ STATUS ", lone.log_path("Bailey").read_bytes()),
        10.0,
        "the STATUS reply logged",
    )
    assert lone.terminate("Bailey") == 0
    for text in (lone.log_path("Bailey").read_bytes(), lone.stderr_path("Bailey").read_bytes()):
        assert TOKEN not in text and HASH[:20] not in text
        assert text.count(b"<redacted>") == 2 * (len(lines) - 1)
        assert b"recv 127.0.0.1:" in text and b" AUTH carol <redacted>\n" in text
