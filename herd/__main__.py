"""`herd`: installs the asyncio reactor before anything imports the global reactor, and stops
quietly when the reader of its output has gone (`herd mail | head -2`), for every command.

slixmpp and aiosmtplib run on the asyncio loop; Twisted must drive that same loop, so the loop
is created and the reactor installed here, first, and only then is the CLI imported.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import sys

STDOUT = 1


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

    try:
        return cli_main(arguments)
    except BrokenPipeError:
        if not _stdout_gone():
            raise  # a socket's, not stdout's: a real error
        return _leave_quietly()


def _stdout_gone() -> bool:
    """Whether nothing reads stdout any more (`herd mail | head -2` after head is done)."""
    poller = select.poll()
    poller.register(STDOUT, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _leave_quietly() -> int:
    """Stop as `cat` does when its reader is gone: no traceback, and the exit code of a
    process SIGPIPE ended.  Whatever is still buffered for stdout goes nowhere, so that the
    interpreter's last flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, STDOUT)
    os.close(devnull)
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
