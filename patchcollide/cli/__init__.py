"""The ``patchcollide`` command: a click group; one module per command group.

The CLI parses and prints; the work is done by library functions that the Python API
reaches too. Library errors for user mistakes become one-line messages with exit code 2.
"""
from __future__ import annotations

import logging
import sys

import click

from ..core.version import __version__
from .batch import batch
from .common import setup_logging
from .demo import demo
from .exact import nullity, nullspace
from .offline import extract, index, store
from .online import collide, sample
from .report import report
from .world import world


class OneLineErrors(click.Group):
    """A click group whose usage errors (bad option values, missing arguments) are one line,
    like every other user error, instead of click's usage block."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            click.echo(f"Error: {e.format_message()}{hint}", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="patchcollide")
@click.option("-v", "--verbose", is_flag=True, help="Log library details (debug level).")
@click.option("-q", "--quiet", is_flag=True,
              help="Only errors; no warnings, no progress bars.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """Find feature collisions made of real image patches.

    Offline: `extract` image folders into an HDF5 patch store, `index build` a FAISS index
    over it. Online: `collide` a source with a target, `sample` the polytope of a run.
    `demo` runs the whole pipeline on scikit-image's sample photos. Exact collisions
    (Ozbulak et al. 2022): `nullspace` builds colliders from the kernel of the first layer,
    `nullity` computes the kernel dimensions of every weight matrix (their Table 1).
    `world build` makes the trained digits world where colliders are judged by trained nets.
    """
    setup_logging(logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING)
    ctx.obj = {"quiet": quiet}


cli.add_command(extract)
cli.add_command(store)
cli.add_command(index)
cli.add_command(collide)
cli.add_command(sample)
cli.add_command(batch)
cli.add_command(demo)
cli.add_command(report)
cli.add_command(nullspace)
cli.add_command(nullity)
cli.add_command(world)


def main() -> None:
    cli(prog_name="patchcollide")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
