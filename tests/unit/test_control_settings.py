"""ramster.control and its protocol without sockets: the settings' one code path, the reload
rule (a ctl change survives until the file's value changes), and the line protocol."""
from __future__ import annotations

import asyncio
import json
import logging

import pytest

from ramster import logsetup
from ramster.config import build
from ramster import hostmem
from ramster.control import Control, check_memory, restart_changes
from ramster.control_protocol import (FAILED, INVALID, MAX_LINE, VERBS, LineBuffer, ProtocolError, Reply,
                                      Request, decode_reply, decode_request, encode_reply, encode_request, refusal)
from ramster.units import PAGE_SIZE
from ramster.zcache import Zcache

MiB = 1 << 20


# ---- the protocol ----------------------------------------------------------------------------

def test_a_request_round_trips_and_its_arity_is_checked():
    line = encode_request("memory", ["128M"])
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_request(line) == Request("memory", ("128M",))
    assert decode_request(encode_request("show")) == Request("show", ())
    with pytest.raises(ProtocolError, match="usage: memory SIZE"):
        decode_request(encode_request("memory", []))
    with pytest.raises(ProtocolError, match="unknown verb 'format'"):
        decode_request(encode_request("format", []))


@pytest.mark.parametrize("line", [
    b"not json\n", b"[1, 2]\n", b'{"args": []}\n', b'{"verb": "show", "args": [1]}\n',
    b'{"verb": "show", "extra": 1}\n', b"\xff\xfe\n", b'{"verb": "show", "args": "x"}\n',
])  # fmt: skip
def test_what_is_not_a_request_is_a_protocol_error(line):
    with pytest.raises(ProtocolError):
        decode_request(line)


def test_replies_round_trip():
    r = decode_reply(encode_reply(Reply(True, "memory 1 -> 2", None, {"changed": True})))
    assert r.ok and r.message == "memory 1 -> 2" and r.result == {"changed": True}
    r = decode_reply(encode_reply(refusal(INVALID, "bad value")))
    assert not r.ok and r.kind == INVALID and r.message == "bad value"
    for bad in (b'{"ok": false, "error": "x", "kind": "nonsense"}', b'{"ok": 1}', b"{}"):
        with pytest.raises(ProtocolError):
            decode_reply(bad)


def test_line_buffer_cuts_lines_and_caps_an_endless_one():
    buf = LineBuffer()
    assert buf.feed(b'{"a"') == [] and buf.pending == 4
    assert buf.feed(b':1}\n{"b":2}\n{') == [b'{"a":1}', b'{"b":2}']
    with pytest.raises(ProtocolError, match="longer than"):
        LineBuffer().feed(b"x" * (MAX_LINE + 1))
    with pytest.raises(ProtocolError):
        decode_request(b"{" + b" " * MAX_LINE + b"}\n")


def test_every_verb_has_a_method_on_the_node_side():
    for name in VERBS:
        assert callable(getattr(Control, "verb_" + name.replace("-", "_")))


# ---- the settings ------------------------------------------------------------------------------

@pytest.fixture
def restore_level():
    old = logsetup.level()
    logsetup.set_level("info")  # what the test files say the node runs at
    yield
    logsetup.set_level(old)


def node_file(path, memory: str, level: str = "info") -> None:
    path.write_text(f'[node]\nmemory = "{memory}"\nlog_level = "{level}"\n'
                    '[[node.export]]\nname = "swap"\nkind = "swap"\nsize = "16M"\n')


def control_for(path, **flags):
    def load():
        return build(path, **flags), None

    cfg, _ = load()
    zc = Zcache(cfg.memory // PAGE_SIZE)
    return zc, Control(zc, cfg, loader=load)


def run(coro):
    return asyncio.run(coro)


def ask(control: Control, verb: str, *args: str) -> Reply:
    return run(control.handle(Request(verb, args)))


def test_reload_applies_what_changed_in_the_file_and_logs_it(tmp_path, restore_level, caplog):
    f = tmp_path / "node.toml"
    node_file(f, "8M")
    zc, control = control_for(f)
    node_file(f, "16M", "debug")
    with caplog.at_level(logging.INFO, logger="ramster.control"):
        lines = control.reload()
    assert zc.max_pageframes == 16 * MiB // PAGE_SIZE and logsetup.level() == "debug"
    assert lines == ["memory 8.0 MiB -> 16.0 MiB", "log_level info -> debug"]
    assert "reload: memory 8.0 MiB -> 16.0 MiB" in caplog.text
    assert control.stats()["control.memory_changes"] == 1 and control.stats()["control.reloads"] == 1
    # the same file again: nothing changes, and the log says so
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ramster.control"):
        assert control.reload() == []
    assert "nothing changed in the config" in caplog.text
    assert control.stats()["control.memory_changes"] == 1


def test_a_ctl_change_survives_a_reload_until_the_file_changes_that_setting(tmp_path, restore_level):
    f = tmp_path / "node.toml"
    node_file(f, "8M")
    zc, control = control_for(f)
    assert ask(control, "memory", "12M").ok
    assert ask(control, "log-level", "warning").ok
    control.reload()  # the file is as it was: both ctl changes stay
    assert zc.max_pageframes == 12 * MiB // PAGE_SIZE and logsetup.level() == "warning"
    node_file(f, "8M", "error")  # the file changes the level only
    control.reload()
    assert zc.max_pageframes == 12 * MiB // PAGE_SIZE and logsetup.level() == "error"
    node_file(f, "4M", "error")  # now the memory: the file's newer word wins
    control.reload()
    assert zc.max_pageframes == 4 * MiB // PAGE_SIZE


def test_a_flag_shadows_the_file_on_reload(tmp_path, restore_level):
    f = tmp_path / "node.toml"
    node_file(f, "8M")
    zc, control = control_for(f, memory="4M")
    node_file(f, "16M")
    control.reload()
    assert zc.max_pageframes == 4 * MiB // PAGE_SIZE


def test_settings_that_need_a_restart_are_logged_not_applied(tmp_path, restore_level, caplog):
    f = tmp_path / "node.toml"
    node_file(f, "8M")
    zc, control = control_for(f)
    f.write_text(f.read_text().replace('log_level = "info"', 'log_level = "info"\ncompressor = "zlib"'))
    with caplog.at_level(logging.WARNING, logger="ramster.control"):
        lines = control.reload()
    assert lines == ["compressor: needs a restart"]
    assert "compressor changed in the config (lz4 -> zlib): needs a restart, not applied" in caplog.text
    assert zc.codec.name == "lz4"


def test_a_broken_file_keeps_the_running_settings(tmp_path, restore_level):
    f = tmp_path / "node.toml"
    node_file(f, "8M")
    zc, control = control_for(f)
    f.write_text("[node\n")
    r = ask(control, "reload")
    assert not r.ok and r.kind == FAILED and "cannot re-read the config" in r.message
    assert zc.max_pageframes == 8 * MiB // PAGE_SIZE
    assert control.stats()["control.reload_failures"] == 1


def test_bad_values_are_refused_as_the_users_mistake(tmp_path, restore_level):
    f = tmp_path / "node.toml"
    node_file(f, "8M")
    zc, control = control_for(f)
    for verb, args, text in (
        ("memory", ("12X",), "invalid memory '12X'"),
        ("memory", ("1000",), "not a positive multiple of 4096"),
        ("memory", (str(hostmem.limit()[0] // PAGE_SIZE * PAGE_SIZE + PAGE_SIZE),), "is more than"),
        ("log-level", ("loud",), "unknown log level 'loud'"),
        ("remotify", ("pers", "off"), "not in a cluster"),
        ("peer", ("b", "down"), "not in a cluster"),
        ("selfshrink", (), "not in a cluster"),
        ("writeback", ("cold",), "expected idle or huge"),
    ):
        r = ask(control, verb, *args)
        assert not r.ok and r.kind == INVALID and text in r.message, (verb, r)
    assert zc.max_pageframes == 8 * MiB // PAGE_SIZE
    assert control.stats()["control.memory_changes"] == 0


def test_check_memory_refuses_more_than_the_machine():
    assert check_memory(4 * MiB) is None
    most = hostmem.limit()[0] // PAGE_SIZE * PAGE_SIZE
    with pytest.raises(Exception, match="is more than"):
        check_memory(most + PAGE_SIZE)
    assert "little is left" in check_memory(most)


def test_restart_changes_name_only_the_fixed_settings(tmp_path):
    a = build(None, memory="8M")
    b = build(None, memory="16M", log_level="debug")
    assert restart_changes(a, b) == []  # the default export follows the memory: no restart to ask for
    d = build(None, memory="8M", exports=["swap:swap:32M"])
    assert [w for w, _, _ in restart_changes(a, d)] == ["exports"]
    c = build(None, memory="8M", compressor="zlib")
    assert [w for w, _, _ in restart_changes(a, c)] == ["compressor"]


def test_show_lists_the_settings_in_force(tmp_path):
    f = tmp_path / "node.toml"
    node_file(f, "8M")
    zc, control = control_for(f)
    r = ask(control, "show")
    assert r.ok and r.result == {"memory": "8.0 MiB", "log_level": logsetup.level()}
    assert json.loads(encode_reply(r))["result"]["memory"] == "8.0 MiB"
    assert "memory = 8.0 MiB" in r.message.splitlines()
