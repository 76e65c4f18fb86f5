"""`herd`: installs the asyncio reactor before anything imports the global reactor.

slixmpp and aiosmtplib run on the asyncio loop; Twisted must drive that same loop, so the loop
is created and the reactor installed here, first, and only then is the CLI imported.
"""

from __future__ import annotations

import asyncio
import sys


def install_reactor() -> None:
    from twisted.internet import asyncioreactor

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["run"]:
        install_reactor()
    from herd.cli import main as cli_main

    return cli_main(arguments)


if __name__ == "__main__":
    sys.exit(main())
