"""`covo-edge-app ART`: start the voice server on a free loopback port and open its page in the default
browser. The same program runs the runtime's and the server's commands (`covo-edge-app check ART`,
`chat`, `serve`, ...), so a frozen build is the whole runtime side in one folder.

A frozen program has no package metadata to find the other sides' commands in, so they are named here.
"""

from __future__ import annotations

import sys
import webbrowser

from covo_edge.runtime.cli import Parser, main as cli_main
from covo_edge.server.commands import add_serve_options, register, run_server

PROG = "covo-edge-app"
COMMANDS = {"chat", "token2wav", "check", "serve", "bench-serve", "-h", "--help"}


def open_page(url: str) -> None:
    print(f"{PROG}: talk to it at {url}", file=sys.stderr, flush=True)
    webbrowser.open(url)


def say(url: str) -> None:
    print(f"{PROG}: serving {url}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in COMMANDS:
        return cli_main(argv, sides=[register], prog=PROG)
    p = Parser(prog=PROG, description="Talk to Covo-Audio-Chat in your browser: starts the voice server on this "
                                      f"machine and opens its page. `{PROG} COMMAND ...` runs a command instead "
                                      f"({', '.join(sorted(c for c in COMMANDS if not c.startswith('-')))}).")
    add_serve_options(p)
    p.add_argument("--no-browser", action="store_true", help="only print the page's address")
    p.set_defaults(port=0)  # a free port
    args = p.parse_args(argv)
    return run(args, say if args.no_browser else open_page)


def run(args, on_ready) -> int:
    """Run the server the way `covo-edge` runs a command: its errors as one line, exit status 2."""
    from covo_edge.runtime.errors import CovoEdgeError

    try:
        return run_server(args, on_ready)
    except CovoEdgeError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
