"""README.md runs as written: its ```sh blocks, in order, in one shell, in a fresh clone.

The convention README's authors rely on:

- A fenced block marked ```sh is executed; any other (```text, ```toml, ```python ...)
  is only read. So a ```sh command must run as written on a fresh Debian machine as root
  (Python 3.11 and what `bash scripts/bootstrap.sh`, the first block, installs).
- All blocks run in one bash, as a reader would type them into one terminal: files, jobs
  and the working directory carry over from block to block. The shell starts in a fresh
  copy of the checkout (as `git clone` makes it: no .venv, no ../shared/corpus), with no
  virtualenv on PATH, and runs with `set -e -o pipefail`: the first command that fails
  fails the test, naming the block's line in README.md and showing its output.
- A command line ending in `&` (before an optional comment) starts a long-running program
  in the background, as in a terminal; the test then waits until that process says it is
  ready (READY=1 on $NOTIFY_SOCKET, which `ramster node` sends once it listens), or fails
  if it exits first. README stops its own nodes (`kill %1; wait %1`, which also checks
  their exit status); whatever still runs at the end is stopped by the test.
- Each block's stdin is /dev/null.

The other test checks the commands README only shows: every `--flag` written after
`ramster COMMAND` anywhere in README exists in that command's --help.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO, fresh_environment
from support import need

README = REPO / "README.md"
FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")
# a lone `&` at the end of a command, before an optional comment (not `&&`, `>&`, `|&`)
BACKGROUND = re.compile(r"(?<![&>|])&\s*(#.*)?$")
STEP_TIMEOUT = 180.0   # one chunk of a block (the first bootstrap, or the engine benchmark, the longest)
READY_TIMEOUT = 60.0   # a background node until READY=1


@dataclass
class Block:
    line: int            # of its first command in the markdown file
    code: str


def sh_blocks(text: str) -> list[Block]:
    """The ```sh blocks of a markdown text, in order."""
    blocks, lang, start, body = [], None, 0, []
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line.strip())
        if lang is None:
            if m:
                lang, start, body = m.group(1), n + 1, []
        elif m and not m.group(1):
            if lang == "sh":
                blocks.append(Block(start, "\n".join(body) + "\n"))
            lang = None
        else:
            body.append(line)
    assert lang is None, f"an unclosed ``` fence opened at line {start - 1}"
    return blocks


def chunks(code: str) -> list[tuple[str, bool]]:
    """A block cut after each background line: (code, ends with a background command).
    Heredocs are skipped over, so a `&` inside one is text."""
    out, cur, heredoc = [], [], None
    for line in code.splitlines():
        cur.append(line)
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            continue
        m = re.search(r"<<-?\s*(['\"]?)([A-Za-z_]\w*)\1", line)  # not `64 << 20` in a Python line
        if m:
            heredoc = m.group(2)
        elif BACKGROUND.search(line):
            out.append(("\n".join(cur) + "\n", True))
            cur = []
    if any(c.strip() for c in cur):
        out.append(("\n".join(cur) + "\n", False))
    return out


@dataclass
class Shell:
    """One bash reading commands from us, its output (and its background jobs') collected."""

    cwd: Path
    work: Path
    env: dict[str, str]
    lines: list[str] = field(default_factory=list)
    background: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.work.mkdir(parents=True, exist_ok=True)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path = self.work / "notify.sock"
        self.notify.bind(str(path))
        self.notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # the sender's pid
        self.ready: set[int] = set()
        self.env = {**self.env, "NOTIFY_SOCKET": str(path)}
        self.proc = subprocess.Popen(["bash", "--norc", "--noprofile"], cwd=self.cwd, env=self.env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.steps = 0
        self._send("set -e -o pipefail\n")

    def _read(self) -> None:
        for raw in self.proc.stdout:
            with self.cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.lines.append(None)  # EOF: bash and every job it started are gone
            self.cond.notify_all()

    def _send(self, text: str) -> None:
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def run(self, code: str, where: str) -> tuple[list[str], int | None]:
        """Run `code`; its output, and $! (the last background job's pid) after it."""
        self.steps += 1
        script = self.work / f"step{self.steps}.sh"
        script.write_text(code)
        marker = f"@@readme-step-{self.steps}"
        with self.cond:
            first = len(self.lines)
        try:
            self._send(f'source {script} </dev/null\necho "{marker} pid=$!"\n')
        except BrokenPipeError:
            pass  # bash is gone: reported below
        deadline = time.monotonic() + STEP_TIMEOUT
        with self.cond:
            while True:
                done = [ln for ln in self.lines[first:] if ln is not None and ln.startswith(marker + " ")]
                if done:
                    out = [ln for ln in self.lines[first:] if ln is not None and not ln.startswith(marker)]
                    pid = done[0].split("pid=", 1)[1]
                    return out, int(pid) if pid else None
                if self.proc.poll() is not None:
                    status = self.proc.returncode
                    self.cond.wait(0.5)  # the last lines of output
                    out = "\n".join(ln for ln in self.lines[first:] if ln is not None)
                    pytest.fail(f"README.md {where} failed (bash exited with {status}):\n{out}", pytrace=False)
                if time.monotonic() > deadline:
                    out = "\n".join(ln for ln in self.lines[first:] if ln is not None)
                    pytest.fail(f"README.md {where} still running after {STEP_TIMEOUT:.0f} s:\n{out}", pytrace=False)
                self.cond.wait(1.0)

    def wait_ready(self, pid: int, where: str) -> None:
        """Until process `pid` sends READY=1 to NOTIFY_SOCKET; fail if it exits first."""
        self.background.append(pid)
        deadline = time.monotonic() + READY_TIMEOUT
        while pid not in self.ready:
            if not _alive(pid):
                with self.cond:
                    out = "\n".join(ln for ln in self.lines if ln is not None)
                pytest.fail(f"README.md {where}: the background command exited before it was ready:\n{out[-4000:]}",
                            pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"README.md {where}: the background command sent no READY=1 in {READY_TIMEOUT:.0f} s",
                            pytrace=False)
            self.notify.settimeout(0.5)  # to look at the process again, not to synchronise
            try:
                data, anc, _, _ = self.notify.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                continue
            sender = next((struct.unpack("iII", d[:12])[0] for lvl, typ, d in anc
                           if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS), None)
            if sender is not None and "READY=1" in data.decode(errors="replace").split("\n"):
                self.ready.add(sender)

    def close(self) -> int:
        """Stop what still runs in the background, end bash; its exit status."""
        for pid in self.background:
            _stop(pid)
        if self.proc.poll() is None:
            try:
                self._send("exit 0\n")
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # Without job control, every job bash started is in its process group: whatever is
        # left (a block failed before its `kill`) gets SIGTERM, and the output pipe's EOF
        # says the last of them is gone.
        # The pipe closes in do_exit before the process becomes a zombie, so the group's
        # members are then looked up in the process table until none runs.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            self.reader.join(30)
            deadline = time.monotonic() + 30
            while _group_alive(self.proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)  # a poll interval: the process table decides
            if not self.reader.is_alive() and not _group_alive(self.proc.pid):
                break
        self.notify.close()
        return self.proc.returncode

    def output(self) -> str:
        with self.cond:
            return "\n".join(ln for ln in self.lines if ln is not None and not ln.startswith("@@readme-step-"))


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _stop(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM a background job bash started (not our child: bash reaps it), SIGKILL if it lingers."""
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.05)  # a poll interval: the process table decides


def run_markdown(text: str, cwd: Path, work: Path, env: dict[str, str], name: str = "README.md") -> str:
    """Execute the ```sh blocks of `text` as the module docstring says; the whole output."""
    blocks = sh_blocks(text)
    shell = Shell(cwd, work, env)
    try:
        for block in blocks:
            for code, background in chunks(block.code):
                where = f"block at line {block.line}"
                out, pid = shell.run(code, where)
                if background:
                    assert pid is not None, f"{name} {where}: a background line started no job"
                    shell.wait_ready(pid, where)
    finally:
        status = shell.close()
    assert status == 0, f"the shell ended with {status}:\n{shell.output()}"
    return shell.output()


def _ports(text: str) -> set[int]:
    ports = {10809, 9105}  # a node's defaults
    for b in sh_blocks(text):
        ports |= {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", b.code)}
    return ports


def test_readme_runs_as_written(fresh_clone, tmp_path):
    need("nbdinfo", "nbdcopy", "qemu-img", "curl", "cmp")
    text = (fresh_clone / "README.md").read_text()
    assert len(sh_blocks(text)) >= 4, "README.md has lost its executed examples"
    busy = []
    for port in sorted(_ports(text)):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    assert not busy, f"README's examples use 127.0.0.1 ports {busy}, which something on this machine holds"
    started = time.monotonic()
    out = run_markdown(text, fresh_clone, tmp_path / "shell", fresh_environment())
    assert "Traceback" not in out, out
    assert time.monotonic() - started < 240, "README's examples have become slow to run"


# --- the runner itself: a failure anywhere is a failure ---------------------------------

def _doc(*blocks: str) -> str:
    return "\n".join(f"text\n```{lang}\n{code}```\n" for lang, code in blocks)


def test_runner_runs_sh_blocks_only_in_one_shell(tmp_path):
    doc = _doc(("sh", "x=1; echo one > f\n"), ("text", "exit 3\n"), ("toml", "false\n"),
               ("sh", 'test "$x" = 1 && cat f && pwd\n'))
    (tmp_path / "cwd").mkdir()
    out = run_markdown(doc, tmp_path / "cwd", tmp_path / "w", fresh_environment())
    assert out.splitlines() == ["one", str(tmp_path / "cwd")]


@pytest.mark.parametrize("code", ["false\n", "true\nfalse\necho never\n", "false | true\n", "no-such-command-here\n"])
def test_runner_fails_on_a_failing_command(tmp_path, code):
    doc = _doc(("sh", "echo ok\n"), ("sh", code))
    (tmp_path / "cwd").mkdir()
    with pytest.raises(pytest.fail.Exception, match="block at line 8 failed"):
        run_markdown(doc, tmp_path / "cwd", tmp_path / "w", fresh_environment())


def test_runner_waits_for_a_background_node_and_stops_it(tmp_path):
    doc = _doc(("sh", f"{sys.executable} -m ramster node --memory 4M --listen unix:nbd.sock --metrics off &  # runs\n"
                      "test -S nbd.sock\n"))
    (tmp_path / "cwd").mkdir()
    env = {**fresh_environment(), "PYTHONPATH": str(REPO / "src")}
    out = run_markdown(doc, tmp_path / "cwd", tmp_path / "w", env)
    assert "ramster node" in out


def test_runner_stops_background_jobs_when_a_block_fails(tmp_path):
    doc = _doc(("sh", "sleep 600 & echo $! > pid\nfalse\n"))  # a job the test did not wait for
    (tmp_path / "cwd").mkdir()
    with pytest.raises(pytest.fail.Exception, match="failed"):
        run_markdown(doc, tmp_path / "cwd", tmp_path / "w", fresh_environment())
    assert not _alive(int((tmp_path / "cwd" / "pid").read_text()))


def test_runner_fails_when_a_background_command_exits(tmp_path):
    doc = _doc(("sh", "sleep 0 &\n"))
    (tmp_path / "cwd").mkdir()
    with pytest.raises(pytest.fail.Exception, match="exited before it was ready"):
        run_markdown(doc, tmp_path / "cwd", tmp_path / "w", fresh_environment())


def test_chunks_cut_after_background_lines_only():
    code = "a &\nb && c\nd >&2\ncat <<EOF\nx &\nEOF\npython -c 'print(1 << 20)'\ne &   # comment\nf\n"
    assert chunks(code) == [("a &\n", True),
                            ("b && c\nd >&2\ncat <<EOF\nx &\nEOF\npython -c 'print(1 << 20)'\ne &   # comment\n", True),
                            ("f\n", False)]


# --- the commands README shows without running them --------------------------------------

MENTION = re.compile(r"\bramster((?:\s+(?:node|stats|keygen|bench|ramdisk|ctl|engine|nbd|cluster|guest))+)"
                     r"((?:[ \t]+[^\s`|;&#]+)*)")


def test_every_flag_readme_shows_exists():
    """`ramster COMMAND ... --flag` (or -f) anywhere in README (blocks, prose, code spans): the
    flag is in `ramster COMMAND --help`."""
    text = README.read_text()
    wanted: dict[tuple[str, ...], set[str]] = {}
    for m in MENTION.finditer(text):
        command = tuple(m.group(1).split())
        flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-zA-Z])(?![\w])", m.group(2)))
        wanted.setdefault(command, set()).update(flags)
    assert ("node",) in wanted and ("keygen",) in wanted, "README no longer shows ramster node and keygen"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "200"}
    missing = []
    for command, flags in sorted(wanted.items()):
        r = subprocess.run([sys.executable, "-m", "ramster", *command, "--help"], capture_output=True, text=True,
                           env=env, timeout=60)
        assert r.returncode == 0, f"ramster {' '.join(command)} --help: {r.stderr}"
        missing += [f"ramster {' '.join(command)} {f}" for f in sorted(flags)
                    if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", r.stdout)]
    assert not missing, f"README shows flags that do not exist: {missing}"
