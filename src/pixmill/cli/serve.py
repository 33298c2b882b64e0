"""`pixmill serve`: the web service (waitress, with threads) and a supervised dispatcher, together."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from types import FrameType

import click

from ..config import Settings, load_settings
from ..logs import setup_logging
from . import options

__all__ = ["serve", "run_server"]

log = logging.getLogger("pixmill.serve")


@click.command("serve")
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1, or PIXMILL_HOST).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port to listen on (default 5000, or PIXMILL_PORT; 0 picks a free one).")
@options.workers()
@options.engine()
@options.data_dir
@options.database_url
@options.blob_url
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Web server threads (default 8, or PIXMILL_THREADS).")
@click.option("--no-dispatcher", "web_only", is_flag=True,
              help="Serve only: a web replica, while `pixmill worker` nodes on the same database do the work.")
def serve(host: str | None, port: int | None, workers: int | None, engine: str | None,
          data_dir: Path | None, database_url: str | None, blob_url: str | None, threads: int | None,
          web_only: bool) -> None:
    """Serve the web page and the API, with a dispatcher running the work on a worker pool."""
    setup_logging()
    settings = load_settings(host=host, port=port, workers=workers, engine=engine, data_dir=data_dir,
                             database_url=database_url, blob_url=blob_url, threads=threads)
    if web_only and not settings.database_url:
        click.echo("pixmill: --no-dispatcher without a database URL: only `pixmill worker` on this data dir "
                   "will run the jobs", err=True)
    run_server(settings, dispatcher=not web_only)


def run_server(settings: Settings, *, dispatcher: bool = True) -> None:
    """Serve until Ctrl-C or SIGTERM, then stop the web server and the dispatcher (if it runs one) cleanly."""
    import waitress

    from ..store import Store, describe_store
    from ..web import create_app
    from ..worker.supervisor import Supervisor

    store = Store.open(settings)
    app = create_app(settings, store)
    # recv_bytes: waitress reads 8 KB at a time by default, and each read of an upload costs CPU;
    # 256 KB reads cost far less per image (each read's buffer is transient; the body is buffered as before).
    server = waitress.create_server(app, host=settings.host, port=settings.port, threads=settings.threads,
                                    max_request_body_size=settings.max_request_bytes + 1024 * 1024,
                                    recv_bytes=256 * 1024, ident="pixmill", clear_untrusted_proxy_headers=True)
    supervisor = Supervisor(settings) if dispatcher else None
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if supervisor is not None:
            supervisor.start()
        url = f"http://{settings.host}:{server.effective_port}/"
        work = (f"with {settings.worker_count()} {settings.engine} workers" if supervisor is not None
                else "without a dispatcher (a web replica)")
        click.echo(f"pixmill: serving on {url} {work}; {describe_store(settings)}; Ctrl-C stops", err=False)
        sys.stdout.flush()
        server.run()           # returns after Ctrl-C or SIGTERM (waitress closes on KeyboardInterrupt)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        click.echo("pixmill: stopping the web server" + (" and the dispatcher" if supervisor else ""), err=True)
        server.close()
        if supervisor is not None:
            supervisor.stop()
        store.close()
        click.echo("pixmill: stopped", err=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    serve()
