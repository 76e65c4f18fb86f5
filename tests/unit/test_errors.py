"""One root error per package, with what an error is about kept in attributes."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from herd.config import ConfigError
from herd.errors import HerdError
from herd.places.venue_files import VenueFileError
from herd.protocol import LineTooLong
from herd.secretfile import SecretFileError
from notifier.channels.xmpp import XmppLoginError
from notifier.errors import (
    DeliveryError,
    NotifierError,
    PermanentDeliveryError,
    TransientDeliveryError,
    UncertainDeliveryError,
)
from notifier.localxmpp import ProsodyError


@pytest.mark.parametrize("error", [ConfigError, VenueFileError, LineTooLong, SecretFileError])
def test_the_herd_s_errors_share_one_root(error: type[Exception]) -> None:
    assert issubclass(error, HerdError)


@pytest.mark.parametrize(
    "error",
    [TransientDeliveryError, UncertainDeliveryError, PermanentDeliveryError, XmppLoginError],
)
def test_the_notifier_s_errors_share_one_root(error: type[Exception]) -> None:
    assert issubclass(error, NotifierError)


def test_errors_other_code_catches_keep_their_older_bases() -> None:
    assert issubclass(VenueFileError, ValueError)
    assert issubclass(ProsodyError, NotifierError) and issubclass(ProsodyError, RuntimeError)


def test_a_line_too_long_says_how_long_and_survives_a_pickle() -> None:
    error = pickle.loads(pickle.dumps(LineTooLong(70000, 65536)))
    assert (error.length, error.max_line) == (70000, 65536)
    assert str(error) == "line of 70000+ bytes exceeds max_line 65536"


def test_a_config_error_keeps_its_file_key_and_problem() -> None:
    error = pickle.loads(pickle.dumps(ConfigError(Path("herd.toml"), "smtp.port", "not a port")))
    assert (error.path, error.key, error.problem) == (Path("herd.toml"), "smtp.port", "not a port")
    assert str(error) == "herd.toml: smtp.port: not a port"


def test_a_delivery_error_carries_the_smtp_reply_beside_its_message() -> None:
    error = PermanentDeliveryError(
        "SMTP 550: 550 5.1.1 no such user",
        code=550,
        enhanced_status="5.1.1",
        server_message="5.1.1 no such user",
    )
    assert str(error) == "SMTP 550: 550 5.1.1 no such user"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.enhanced_status, copy.server_message) == (
        550,
        "5.1.1",
        "5.1.1 no such user",
    )
    assert DeliveryError("XMPP session is down").code is None
