"""Configuration: sizes, defaults, TOML + flags, and one clear error per mistake."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from ramster import config
from ramster.config import ConfigError, ExportConfig, build, parse_export_spec

GiB = 1 << 30


@pytest.mark.parametrize("memory", ["1.5G", "-4096", "4096iB", True, 1.0, -1])
def test_bad_sizes_are_config_errors(memory):
    # the grammar itself is ramster.units' (tests/unit/test_units.py); config reports it as ConfigError
    with pytest.raises(ConfigError, match="invalid memory"):
        build(memory=memory)
    with pytest.raises(ConfigError, match="size of export 'a'"):
        build(exports=[f"a:swap:{memory}"])


def test_defaults():
    cfg = build()
    assert cfg.memory == config.default_memory()
    assert cfg.memory <= GiB and cfg.memory % 4096 == 0
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert cfg.memory == min(GiB, ram // 4) // 4096 * 4096
    assert cfg.listen == ["127.0.0.1:10809"]
    assert cfg.metrics == "127.0.0.1:9105"
    assert cfg.log_level == "info" and cfg.log_format == "text"
    assert cfg.compressor == "lz4"
    assert cfg.exports == [ExportConfig("swap", "swap", 2 * cfg.memory, None)]


def test_default_swap_follows_memory_flag():
    cfg = build(memory="64M")
    assert cfg.memory == 64 << 20
    assert cfg.exports == [ExportConfig("swap", "swap", 128 << 20, None)]


def test_export_spec(tmp_path):
    e = parse_export_spec(f"disk:cache:1G:{tmp_path}/a:b.img")
    assert e == ExportConfig("disk", "cache", GiB, tmp_path / "a:b.img")
    assert parse_export_spec("s:SWAP:8M") == ExportConfig("s", "swap", 8 << 20, None)
    for bad in ("swap", "swap:swap", "::1G", "a:swap:1G:"):
        with pytest.raises(ConfigError, match="--export"):
            parse_export_spec(bad)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "ramster.toml"
    p.write_text(text)
    return p


def test_toml_file_and_flag_override(tmp_path):
    p = write(tmp_path, """
[cluster]
nodes = ["a", "b"]          # owned by later issues: ignored here

[remotify]
anything = 1

[node]
memory = "256M"
compressor = "zstd"
listen = ["127.0.0.1:10900", "unix:/tmp/x.sock"]
metrics = "off"
log_level = "DEBUG"
log_format = "JSON"

[[node.export]]
name = "swap"
kind = "swap"
size = "1G"
backing = "swap.img"

[[node.export]]
name = "disk"
kind = "cache"
size = 8388608
backing = "disk.img"
""")
    cfg = build(p)
    assert cfg.memory == 256 << 20
    assert cfg.compressor == "zstd"
    assert cfg.listen == ["127.0.0.1:10900", "unix:/tmp/x.sock"]
    assert cfg.metrics is None
    assert cfg.log_level == "debug" and cfg.log_format == "json"
    # relative backing paths are beside the file, not the working directory
    assert cfg.exports == [ExportConfig("swap", "swap", GiB, tmp_path / "swap.img"),
                           ExportConfig("disk", "cache", 8 << 20, tmp_path / "disk.img")]

    cfg = build(p, memory="64M", compressor="LZ4", listen=["127.0.0.1:1"], exports=["s:swap:4M"],
                metrics="127.0.0.1:0", log_level="warning", log_format="logfmt")
    assert (cfg.memory, cfg.compressor, cfg.listen, cfg.metrics, cfg.log_level, cfg.log_format) == (
        64 << 20, "lz4", ["127.0.0.1:1"], "127.0.0.1:0", "warning", "logfmt")
    assert cfg.exports == [ExportConfig("s", "swap", 4 << 20, None)]


def test_file_without_node_table_uses_defaults(tmp_path):
    cfg = build(write(tmp_path, "[cluster]\nx = 1\n"))
    assert cfg.exports[0].name == "swap" and cfg.listen == ["127.0.0.1:10809"]


@pytest.mark.parametrize("text,message", [
    ("[node]\nmemroy = '1G'\n", "unknown key 'memroy' in \\[node\\]"),
    ("[node]\n[[node.export]]\nname='a'\nkind='swap'\nsize='1M'\ncolour=1\n", "unknown key 'colour'"),
    ("[node]\n[[node.export]]\nname='a'\nkind='swap'\n", "missing 'size'"),
    ("[node\n", "ramster.toml"),
    ("node = 3\n", "must be a table"),
    ("[node]\nlisten = [1]\n", "invalid listen"),
])
def test_toml_errors(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        build(write(tmp_path, text))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build(tmp_path / "nope.toml")


@pytest.mark.parametrize("kwargs,message", [
    (dict(exports=["a:tape:1M"]), "unknown kind 'tape'"),
    (dict(exports=["a:swap:1000"]), "not a positive multiple of 4096"),
    (dict(exports=["a:swap:0"]), "not a positive multiple of 4096"),
    (dict(exports=["a:cache:1M"]), "needs a backing file"),
    (dict(exports=["a:swap:1M", "a:swap:2M"]), "duplicate export name 'a'"),
    (dict(memory="1000"), "memory 1000 is not a positive multiple"),
    (dict(memory="8T"), "more than one node can hold"),
    (dict(compressor="gzip"), "unknown compressor 'gzip'"),
    (dict(listen=["localhost"]), "invalid listen address 'localhost'"),
    (dict(listen=["127.0.0.1:99999"]), "invalid listen address"),
    (dict(listen=["::1:80"]), "brackets"),
    (dict(listen=["unix:"]), "empty socket path"),
    (dict(metrics="unix:/tmp/m.sock"), "invalid metrics address"),
    (dict(metrics="nowhere"), "invalid metrics address"),
    (dict(log_level="loud"), "unknown log level"),
    (dict(log_format="xml"), "unknown log format 'xml'; choose one of: text, json, logfmt"),
])
def test_validation_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        build(**kwargs)
    assert "\n" not in str(info.value)


def test_backing_file_checks(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        build(exports=[f"a:swap:1M:{tmp_path}"])
    with pytest.raises(ConfigError, match="cannot be created"):
        build(exports=[f"a:swap:1M:{tmp_path}/no/such/dir/f"])
    with pytest.raises(ConfigError, match="same backing file"):
        build(exports=[f"a:swap:1M:{tmp_path}/f", f"b:cache:1M:{tmp_path}/./f"])
    cfg = build(exports=[f"a:swap:1M:{tmp_path}/f", f"b:cache:1M:{tmp_path}/g"])
    assert [e.backing for e in cfg.exports] == [tmp_path / "f", tmp_path / "g"]


def test_ipv6_and_unix_addresses():
    cfg = build(listen=["[::1]:10809", "unix:/tmp/r.sock", "*:10810"], metrics="[::1]:9105")
    assert cfg.listen == ["[::1]:10809", "unix:/tmp/r.sock", "*:10810"]


@pytest.mark.parametrize("size", ["99999999T", "8192T", str((4096 << 40) + 4096)])
def test_export_sizes_beyond_what_can_be_addressed_are_refused(size):
    with pytest.raises(ConfigError, match="more than an export can address"):
        build(exports=[f"swap:swap:{size}"], memory="1M")


def test_largest_export_is_accepted():
    cfg = build(exports=["swap:swap:4096T"], memory="1M")
    assert cfg.exports[0].size == 4096 << 40


@pytest.mark.parametrize("url", ["http://[::1", "ftp://x", "http://127.0.0.1:99999", "::::", "http://",
                                 "http://a b", "http://127.0.0.1:9105/other"])
def test_stats_url_mistakes_are_one_line_errors(url):
    from ramster.cli.stats import NodeUnreachable, node_base_url

    with pytest.raises(NodeUnreachable, match="invalid --url"):
        node_base_url(url)


@pytest.mark.parametrize("url,want", [("127.0.0.1:9105", "http://127.0.0.1:9105"),
                                      ("http://[::1]:9105/stats", "http://[::1]:9105"),
                                      ("https://node:1/metrics/", "https://node:1")])
def test_stats_url_forms(url, want):
    from ramster.cli.stats import node_base_url

    assert node_base_url(url) == want


def test_relative_paths_in_the_file_are_the_files_and_on_the_command_line_the_working_directorys(
        tmp_path, monkeypatch):
    etc, cwd = tmp_path / "etc", tmp_path / "cwd"
    etc.mkdir()
    cwd.mkdir()
    p = etc / "ramster.toml"
    p.write_text('[node]\nlisten = ["unix:nbd.sock", "unix:/abs/n.sock", "127.0.0.1:1"]\n'
                 '[[node.export]]\nname = "s"\nkind = "swap"\nsize = "1M"\nbacking = "s.img"\n')
    monkeypatch.chdir(cwd)
    cfg = build(p)
    assert cfg.listen == [f"unix:{etc}/nbd.sock", "unix:/abs/n.sock", "127.0.0.1:1"]
    assert cfg.exports[0].backing == etc / "s.img"
    # the same file named by a relative path: still the file's directory
    assert build(Path("../etc/ramster.toml")).exports[0].backing.resolve() == etc / "s.img"
    # on the command line: the working directory's, made absolute; addresses are passed as given
    cfg = build(p, exports=["c:swap:1M:c.img"], listen=["unix:here.sock"])
    assert [e.backing for e in cfg.exports] == [cwd / "c.img"]
    assert cfg.listen == ["unix:here.sock"]
    assert parse_export_spec("x:cache:1M:img/x.img").backing == cwd / "img" / "x.img"
    assert parse_export_spec("x:cache:1M:~/x.img").backing == Path.home() / "x.img"
