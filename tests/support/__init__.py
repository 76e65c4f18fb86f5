"""The one test kit, in the manner of Twisted's `internet/testing.py`: what the tests and the
benchmarks (bench/) share to run real things on loopback.

`ports` (free loopback ports), `polling` (waits with a deadline), `lines` (blocking line-protocol
clients), `users` (`herd user add` and tokens), `processes` (children that are always stopped),
`herd` (a herd of `herd run` processes), `smtp` (the one aiosmtpd sink), `prosody` (the one
Prosody), `testca` (a CA of the test's own and the certificates it issues, for TLS), `browser`
(a real headless Chromium and its fixtures), `channels` (an in-memory `Channel`) and
`fixtures` (pytest fixtures exposing them).
"""
