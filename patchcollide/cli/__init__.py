"""The ``patchcollide`` command: a click group; one module per command group.

The CLI parses and prints; the work is done by library functions that the Python API
reaches too. Library errors for user mistakes become one-line messages with exit code 2.
"""
from __future__ import annotations

import logging
import sys

import click

from .. import __version__
from .common import setup_logging
from .demo import demo
from .offline import extract, index, store


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="patchcollide")
@click.option("-v", "--verbose", is_flag=True, help="Log library details (debug level).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors; no warnings or progress bars.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """Find feature collisions made of real image patches.

    Offline: `extract` image folders into an HDF5 patch store, `index build` a FAISS index
    over it. `demo` runs the whole pipeline on scikit-image's sample photos.
    """
    setup_logging(logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING)
    ctx.obj = {"quiet": quiet}


cli.add_command(extract)
cli.add_command(store)
cli.add_command(index)
cli.add_command(demo)


def main() -> None:
    cli(prog_name="patchcollide")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
