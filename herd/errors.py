"""The herd's root error: every failure the herd reports on purpose (an unusable config, secret
file or venue file, an over-long line, a line that is not a command, an operator command no
server took) derives from `HerdError` and carries what it is about as
attributes, so a caller catches the herd's failures, not its bugs.
"""

from __future__ import annotations


class HerdError(Exception):
    """Root of the errors the herd raises on purpose."""
