"""Issue 17 item 13: usage errors name the command that was mistyped, once, with its usage.

Run in-process (argparse only; nothing here touches an HSM or starts a server)."""

from __future__ import annotations

import pytest

from xksproxy.admin.cli import main


def _usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2
    out = capsys.readouterr()
    assert out.out == ""
    return out.err


def test_mistyped_subcommand_option_shows_that_subcommands_usage(capsys) -> None:
    err = _usage_error(capsys, "keys", "list", "--jsno")
    assert err.startswith("usage: xksproxy keys list ")
    assert "--json" in err  # the option the user meant is right there
    assert "xksproxy keys list: error: unrecognized arguments: --jsno" in err


def test_mistyped_option_of_a_nested_command_other_than_keys(capsys) -> None:
    err = _usage_error(capsys, "credentials", "add", "--keystore", "demo", "--frobnicate")
    assert err.startswith("usage: xksproxy credentials add ")


def test_out_of_range_bind_port_names_the_flag_once(capsys) -> None:
    err = _usage_error(capsys, "serve", "--bind", "127.0.0.1:99999")
    assert err.startswith("usage: xksproxy serve ")
    message = err.splitlines()[-1]
    assert message.startswith("xksproxy serve: error: argument --bind: ")
    assert message.count("bind") == 1, message
    assert "65535" in message and "'127.0.0.1:99999'" in message


def test_keys_create_help_describes_usage_and_its_default(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["keys", "create", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--usage" in text
    assert "what the key may do" in text
    assert "(default: encrypt-decrypt)" in text
