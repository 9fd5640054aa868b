"""`clipsearch serve`: the command line over `serve/server.py` (one core call; errors mapped to exit
codes by `options.handle_errors`)."""
from __future__ import annotations

import click

from .options import db_option, handle_errors, model_option, text_model_option, threads_option


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default="127.0.0.1", show_default=True, envvar="CLIPSEARCH_HOST",
              help="Address to listen on: 127.0.0.1 is this machine only; 0.0.0.0 the home network (an access "
                   "token is then required) [env CLIPSEARCH_HOST].")
@click.option("--port", type=click.IntRange(0, 65535), default=8750, show_default=True, envvar="CLIPSEARCH_PORT",
              help="Port [env CLIPSEARCH_PORT].")
@click.option("--token", envvar="CLIPSEARCH_TOKEN", default=None, metavar="TOKEN",
              help="Access token [env CLIPSEARCH_TOKEN]; default when --host is not this machine: one generated "
                   "once and kept in the data dir (0600), so links and cookies survive a restart.")
@click.option("--new-token", is_flag=True, help="Replace the kept access token with a new one (every browser then "
                                                 "needs the new link).")
@click.option("--no-auth", is_flag=True, help="Serve without a token even on the network (anyone who can reach "
                                               "the port sees every photo).")
@click.option("--print-service", type=click.Choice(["systemd"]), default=None,
              help="Print a service unit that runs this serve (these options) at boot as this user, restarting it "
                   "on failure, and exit (docs/serve.md).")
@click.option("--thumbnail-cache", "cache_mb", type=click.IntRange(16), default=None, metavar="MB",
              help="Disk for cached previews under the data dir [default 512].")
@click.option("--rank-memory", "rank_memory_mb", type=click.IntRange(0), default=None, metavar="MB",
              envvar="CLIPSEARCH_RANK_MEMORY", hidden=True,
              help="No longer used: the ranking keeps no pre-packed vectors (accepted, with a note).")
@db_option
@model_option
@text_model_option
@threads_option
def serve(host, port, token, new_token, no_auth, print_service, cache_mb, rank_memory_mb, db_path, model_dir,
          text_model_dir, threads):
    """Search the cache from a browser: a page with a search box and thumbnails."""
    with handle_errors():
        if rank_memory_mb is not None:
            click.echo("clipsearch: note: --rank-memory / CLIPSEARCH_RANK_MEMORY is no longer used: the ranking "
                       "reads the packed vectors as stored, nothing pre-packed; leave it out "
                       "(docs/serve.md \"Memory\")", err=True)
        if print_service:
            return print_unit(host, port, token, no_auth, cache_mb, db_path, model_dir, threads, text_model_dir)
        from clipsearch.serve.access import link_with_token
        from clipsearch.serve.server import make_server

        if token is not None and len(token) < 16:
            raise click.BadParameter("use at least 16 characters (e.g. `openssl rand -base64 18`)", param_hint="--token")
        server, token = make_server(db_path, model_dir, host, port, token, no_auth, threads, cache_mb, new_token,
                                    text_model_dir)
        shown = f"[{host}]" if ":" in host else host
        if host in ("0.0.0.0", "::"):
            shown = _lan_address() or "THIS-MACHINE"
        url = f"http://{shown}:{server.server_address[1]}/"
        if no_auth and host not in ("127.0.0.1", "localhost", "::1"):
            click.echo("clipsearch: warning: --no-auth: anyone who can reach this port sees every photo in the cache",
                       err=True)
        click.echo(f"clipsearch: serving {db_path} at {link_with_token(url, token)}", err=True)
        if token:
            click.echo("clipsearch: open that link once per browser (it sets a cookie); keep it private", err=True)
        import functools

        from clipsearch.serve.localsocket import serve_socket, stop_socket

        from .query import answer_forwarded

        local, where = serve_socket(db_path, functools.partial(answer_forwarded, served=(db_path, model_dir, text_model_dir),
                                                               run=server.app.local_query))
        if local is None:
            click.echo(f"clipsearch: note: `clipsearch query` will run cold ({where})", err=True)
        else:
            click.echo(f"clipsearch: `clipsearch query` on this machine uses this server ({where})", err=True)
        click.echo("clipsearch: Ctrl-C stops", err=True)
        try:
            server.serve_forever(poll_interval=0.5)
        except KeyboardInterrupt:
            click.echo("clipsearch: stopped", err=True)
        finally:
            server.server_close()
            if local is not None:
                stop_socket(local, where)


def _lan_address() -> str | None:
    """This machine's address on the network (no packet is sent: connecting a UDP socket only
    picks the route)."""
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed anywhere real
            return probe.getsockname()[0]
    except OSError:
        return None


def print_unit(host, port, token, no_auth, cache_mb, db_path, model_dir, threads, text_model_dir=None) -> None:
    import getpass

    from clipsearch.config import home
    from clipsearch.serve.service import systemd_unit

    if token is not None:
        click.echo("clipsearch: note: the unit does not carry --token / CLIPSEARCH_TOKEN (a command line is "
                   "visible to every user): it uses the token kept in the data dir; see the comment in the unit",
                   err=True)
    extra = (["--no-auth"] if no_auth else []) + (["--thumbnail-cache", str(cache_mb)] if cache_mb else []) + (
        ["--threads", str(threads)] if threads else []) + (
        ["--text-model", str(text_model_dir.resolve())] if text_model_dir else [])
    click.echo(systemd_unit(host, port, db_path, model_dir, home().resolve(), getpass.getuser(), extra), nl=False)
