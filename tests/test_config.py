"""
Unit tests of configuration files and the twistd options of the master and
the server.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from twisted.python import usage

from volumecap.master import tap as master_tap
from volumecap.server import tap as server_tap

CONF = Path(__file__).resolve().parent.parent / "conf"

MASTER_DEFAULTS = {
    "dc": "dc1",
    "listen": "tcp:7100:interface=127.0.0.1",
    "data_dir": "./run/master",
    "timezone": "UTC",
    "scale": 2,
    "topup_percent": 10,
    "threshold_percent": 10,
    "recall_timeout": 0.2,
    "retention": 604800.0,
    "dcs": (),
    "amqp": "amqp://guest@127.0.0.1:5672/",
    "amqp_spec": "/usr/share/amqp/specs/0-9-1-rabbit/amqp0-9-1.stripped.extended.xml",
    "amqp_exchange": "volumecap",
}

SERVER_DEFAULTS = {
    "master": "tcp:127.0.0.1:7100",
    "listen": "tcp:7200:interface=127.0.0.1",
    "name": f"{socket.gethostname()}-7200",
    "state_dir": "./run/server",
    "topup_wait": 0.25,
    "report_interval": 1.0,
    "prefetch": 60.0,
    "capped_backoff": 1.0,
}


def master_settings(*arguments: str) -> dict[str, Any]:
    options = master_tap.Options()
    options.parseOptions(list(arguments))
    return options.settings


def server_settings(*arguments: str) -> dict[str, Any]:
    options = server_tap.Options()
    options.parseOptions(list(arguments))
    return options.settings


def master_error(*arguments: str) -> str:
    """
    Return the message of the UsageError that the master's options raise.
    """
    with pytest.raises(usage.UsageError) as raised:
        master_settings(*arguments)
    return str(raised.value)


def write_toml(tmp_path: Path, text: str, name: str = "volumecap.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_master_defaults() -> None:
    """
    With no options and no file, the master uses its documented defaults.
    """
    assert master_settings() == MASTER_DEFAULTS


def test_server_defaults() -> None:
    """
    With no options and no file, the server uses its documented defaults.
    """
    assert server_settings() == SERVER_DEFAULTS


def test_dcs_parsed() -> None:
    """
    --dcs takes comma-separated names and must include this data center.
    """
    settings = master_settings("--dc", "b", "--dcs", "a, b,c", "--amqp", "amqp://guest:guest@127.0.0.1:5672/")
    assert settings["dcs"] == ("a", "b", "c")
    assert "does not include this data center 'dc1'" in master_error("--dcs", "a,b")
    assert "repeat" in master_error("--dc", "a", "--dcs", "a,a")
    assert "invalid data center name 'a b'" in master_error("--dc", "a", "--dcs", "a,a b")


def test_amqp_url_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A data center sharing caps needs a valid RabbitMQ URL with a password.
    """
    monkeypatch.delenv("VOLUMECAP_AMQP_PASSWORD", raising=False)
    assert "invalid --amqp" in master_error("--dc", "a", "--dcs", "a,b", "--amqp", "http://example")
    assert "VOLUMECAP_AMQP_PASSWORD" in master_error("--dc", "a", "--dcs", "a,b", "--amqp", "amqp://guest@127.0.0.1/")
    missing = master_error(
        "--dc", "a", "--dcs", "a,b", "--amqp", "amqp://guest:guest@127.0.0.1/", "--amqp-spec", "/nonexistent.xml"
    )
    assert "--amqp-spec /nonexistent.xml: file not found" in missing
    directory = master_error(
        "--dc", "a", "--dcs", "a,b", "--amqp", "amqp://guest:guest@127.0.0.1/", "--amqp-spec", "/tmp"
    )
    assert "--amqp-spec /tmp: not a file" in directory


def test_amqp_spec_not_xml(tmp_path: Path) -> None:
    """
    A specification file that is not a valid AMQP specification is rejected
    at option time with a message naming it.
    """
    spec = tmp_path / "spec.xml"
    spec.write_text("not xml", encoding="utf-8")
    message = master_error(
        "--dc", "a", "--dcs", "a,b", "--amqp", "amqp://guest:guest@127.0.0.1/", "--amqp-spec", str(spec)
    )
    assert f"--amqp-spec {spec}: not a valid AMQP specification" in message


def test_server_name_from_port() -> None:
    """
    The server's default name is the host name and the listen port.
    """
    settings = server_settings("--listen", "tcp:7300:interface=127.0.0.1")
    assert settings["name"] == f"{socket.gethostname()}-7300"


def test_server_name_given() -> None:
    """
    A given server name is kept.
    """
    assert server_settings("--name", "web-1")["name"] == "web-1"


def test_sample_master_file() -> None:
    """
    The sample conf/master.toml is valid and sets the defaults.
    """
    assert master_settings("--config", str(CONF / "master.toml")) == MASTER_DEFAULTS


def test_sample_server_file() -> None:
    """
    The sample conf/server.toml is valid and sets the defaults.
    """
    assert server_settings("--config", str(CONF / "server.toml")) == SERVER_DEFAULTS


def test_master_file_values(tmp_path: Path) -> None:
    """
    Values in the configuration file replace the defaults.
    """
    path = write_toml(
        tmp_path,
        'dc = "paris"\n'
        'timezone = "Europe/Paris"\n'
        "scale = 3\n"
        "topup_percent = 20\n"
        "recall_timeout = 0.5\n",
    )
    settings = master_settings("--config", path)
    assert settings["dc"] == "paris"
    assert settings["timezone"] == "Europe/Paris"
    assert settings["scale"] == 3
    assert settings["topup_percent"] == 20
    assert settings["recall_timeout"] == 0.5
    assert settings["threshold_percent"] == 10


def test_server_file_values(tmp_path: Path) -> None:
    """
    Values in the server's configuration file replace the defaults.
    """
    path = write_toml(tmp_path, 'name = "web-1"\ntopup_wait = 0.5\nmaster = "tcp:10.0.0.1:7100"\n')
    settings = server_settings("-c", path)
    assert settings["name"] == "web-1"
    assert settings["topup_wait"] == 0.5
    assert settings["master"] == "tcp:10.0.0.1:7100"
    assert settings["prefetch"] == 60.0


def test_options_win(tmp_path: Path) -> None:
    """
    A command-line option wins over the same key in the file.
    """
    path = write_toml(tmp_path, 'dc = "paris"\nscale = 3\ntopup_percent = 20\n')
    settings = master_settings("--config", path, "--dc", "berlin", "--topup-percent", "30")
    assert settings["dc"] == "berlin"
    assert settings["topup_percent"] == 30
    assert settings["scale"] == 3


def test_unknown_keys_listed(tmp_path: Path) -> None:
    """
    One UsageError names the file, every unknown key and every invalid value.
    """
    path = write_toml(tmp_path, 'colour = "red"\ntopup = 5\nscale = 12\ndc = "dc1"\n')
    message = master_error("--config", path)
    assert path in message
    assert "'colour'" in message
    assert "'topup'" in message
    assert "scale = 12" in message


def test_server_unknown_key(tmp_path: Path) -> None:
    """
    The server rejects a master-only key in its file.
    """
    path = write_toml(tmp_path, "scale = 2\n")
    with pytest.raises(usage.UsageError) as raised:
        server_settings("--config", path)
    assert "'scale'" in str(raised.value)


@pytest.mark.parametrize(
    "option, value",
    [
        ("--topup-percent", "0"),
        ("--topup-percent", "101"),
        ("--threshold-percent", "0"),
        ("--threshold-percent", "101"),
        ("--recall-timeout", "-1"),
        ("--recall-timeout", "0"),
        ("--recall-timeout", "nan"),
        ("--retention", "-5"),
        ("--timezone", "Mars/Olympus"),
        ("--scale", "12"),
        ("--scale", "-1"),
        ("--dc", ""),
    ],
)
def test_master_invalid_option(option: str, value: str) -> None:
    """
    An invalid command-line value is rejected with a message naming it.
    """
    message = master_error(f"{option}={value}")
    assert option in message
    assert repr(value) in message


@pytest.mark.parametrize(
    "key, value",
    [
        ("topup_percent", "0"),
        ("threshold_percent", "101"),
        ("recall_timeout", "-0.5"),
        ("retention", "-5"),
        ("timezone", '"Mars/Olympus"'),
        ("scale", "12"),
    ],
)
def test_master_invalid_file_value(tmp_path: Path, key: str, value: str) -> None:
    """
    An invalid value in the file is rejected with a message naming the key and value.
    """
    path = write_toml(tmp_path, f"{key} = {value}\n")
    message = master_error("--config", path)
    assert path in message
    assert key in message
    assert value.strip('"') in message


def test_invalid_options_listed() -> None:
    """
    One UsageError lists every invalid command-line value.
    """
    message = master_error("--topup-percent", "0", "--scale", "12", "--timezone", "Mars/Olympus")
    assert "'0'" in message
    assert "'12'" in message
    assert "'Mars/Olympus'" in message


@pytest.mark.parametrize(
    "option, value",
    [("--topup-wait", "0"), ("--prefetch", "-1"), ("--capped-backoff", "inf"), ("--report-interval", "soon")],
)
def test_server_invalid_option(option: str, value: str) -> None:
    """
    An invalid server option is rejected with a message naming it.
    """
    with pytest.raises(usage.UsageError) as raised:
        server_settings(option, value)
    assert repr(value) in str(raised.value)


def test_unknown_option() -> None:
    """
    An unknown command-line option is rejected.
    """
    assert "--bogus" in master_error("--bogus", "1")


def test_missing_file(tmp_path: Path) -> None:
    """
    A configuration file that does not exist is a UsageError naming its path.
    """
    path = str(tmp_path / "absent.toml")
    assert path in master_error("--config", path)


def test_directory_as_file(tmp_path: Path) -> None:
    """
    A directory given as the configuration file is a UsageError naming its path.
    """
    assert str(tmp_path) in master_error("--config", str(tmp_path))


@pytest.mark.parametrize("text", ["dc = \n", "[unclosed\n", 'dc = "a"\ndc = "b"\n', "scale = 2 3\n"])
def test_malformed_file(tmp_path: Path, text: str) -> None:
    """
    A file that is not valid TOML is a UsageError naming its path.
    """
    path = write_toml(tmp_path, text)
    assert path in master_error("--config", path)


def test_file_not_utf8(tmp_path: Path) -> None:
    """
    A file that is not UTF-8 is a UsageError naming its path.
    """
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'dc = "z\xfcrich"\n')
    assert str(path) in master_error("--config", str(path))


@pytest.mark.parametrize("text", ["[data_dir]\npath = 1\n", 'listen = ["tcp:7100"]\n', "dc = true\n"])
def test_file_wrong_type(tmp_path: Path, text: str) -> None:
    """
    A table, array or boolean given for a string setting is rejected.
    """
    path = write_toml(tmp_path, text)
    assert path in master_error("--config", path)
