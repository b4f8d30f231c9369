#!/usr/bin/env python3
"""Runs a command in a pseudo-terminal, as a person at a terminal would see
it, and prints what was on its last line at moments of the run (the frames
a progress bar draws are separated by carriage returns and cursor moves).

    infra/terminal_session.py [--every S] [--interrupt-on REGEX | --interrupt-after S] -- CMD ARGS...

--interrupt-on types Ctrl-C (\\x03, which the terminal turns into SIGINT
for the foreground process) the first time REGEX appears in the output;
--interrupt-after types it after S seconds. Exits with the command's exit
code. Used for the closing-note evidence of issue #25 (progress that moves;
Ctrl-C during a restore, then the rerun).
"""
import argparse
import os
import pty
import re
import select
import sys
import time

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def visible(raw: bytes) -> str:
    """The text a frame shows, without terminal control sequences."""
    return ANSI.sub(b"", raw).decode("utf-8", "replace").strip()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--every", type=float, default=5.0, help="seconds between printed frames")
    parser.add_argument("--interrupt-on", help="type Ctrl-C when this regex first appears")
    parser.add_argument("--interrupt-after", type=float, help="type Ctrl-C after this many seconds")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")

    pid, terminal = pty.fork()
    if pid == 0:
        os.environ.setdefault("TERM", "xterm-256color")
        os.execvp(command[0], command)

    started = time.monotonic()
    seen = b""
    last_frame = b""
    next_print = 0.0
    interrupted = False

    def stamp() -> str:
        return f"[{time.monotonic() - started:7.1f} s]"

    while True:
        ready, _, _ = select.select([terminal], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # EIO: the command closed the terminal
                chunk = b""
            if not chunk:
                break
            seen = (seen + chunk)[-262144:]
            # A frame ends at a carriage return or a newline; keep the last
            # non-empty one (indicatif redraws its lines in place).
            pieces = [p for p in re.split(rb"[\r\n]", seen) if visible(p)]
            if pieces:
                last_frame = pieces[-1]
        elapsed = time.monotonic() - started
        if elapsed >= next_print and last_frame:
            print(f"{stamp()} {visible(last_frame)}", flush=True)
            next_print = elapsed + args.every
        if not interrupted and (
            (args.interrupt_on and re.search(args.interrupt_on.encode(), ANSI.sub(b"", seen)))
            or (args.interrupt_after is not None and elapsed >= args.interrupt_after)
        ):
            print(f"{stamp()} ^C typed", flush=True)
            os.write(terminal, b"\x03")
            interrupted = True

    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    # Whatever the command printed last, line by line (its final words).
    tail = [visible(line) for line in re.split(rb"[\r\n]", seen) if visible(line)]
    print(f"{stamp()} last lines on screen:", flush=True)
    for line in tail[-6:]:
        print(f"    {line}")
    print(f"{stamp()} exit code {code}", flush=True)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
