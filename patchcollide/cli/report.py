"""``patchcollide report``: a static HTML page for a run or a batch directory."""
from __future__ import annotations

import pathlib

import click

from ..runs.report import write_html
from .common import user_errors


@click.command()
@click.argument("path", type=click.Path())
@click.option("--open/--no-open", "open_page", default=False, show_default=True,
              help="Also open the page in the default browser.")
def report(path, open_page):
    """Write PATH/report.html for a run directory (PATH/report.json) or a batch directory
    (PATH/batch.json; then also a page in each done job's run directory).

    The page is static: open it from disk, no server or network needed. It is not a single
    file: it shows the run's PNGs through relative links, so keep it in its directory (copy
    the whole directory to share it). Prints its file:// URL.
    """
    with user_errors():
        page = write_html(path)
    url = pathlib.Path(page).resolve().as_uri()
    click.echo(url)
    if open_page:
        click.launch(url)
