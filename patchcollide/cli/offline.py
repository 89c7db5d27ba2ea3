"""Offline commands: ``extract``, ``store info | verify``, ``index build | search | eval | verify``."""
from __future__ import annotations

import os

import click
import numpy as np

from ..core.formats import INDEX_DIR
from ..executors import make_executor
from ..offline.extract import ExtractConfig, extract_store
from ..offline.index_build import IndexConfig, build_index
from ..offline.index_format import STORE_FILE
from ..offline.knn import EvalConfig, PatchIndex, SearchConfig, evaluate, query_patches, verify_index
from ..offline.store import PatchStore
from ..runs.pictures import neighbour_mosaic, save_png
from .common import (
    Progress,
    UserError,
    config_options,
    echo_json,
    executor_options,
    human_bytes,
    show_progress,
    user_errors,
)

DEFAULT_INDEX = INDEX_DIR


@click.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("-o", "--out", default=os.path.join(DEFAULT_INDEX, STORE_FILE), show_default=True,
              type=click.Path(dir_okay=False), help="HDF5 store to write (resumed if a run was killed).")
@config_options(ExtractConfig, ("fraction", "resize", "stride", "seed"))
@click.option("--workers", default=1, show_default=True, type=int,
              help="Processes decoding images (--executor local; Ray uses its cluster's CPUs).")
@executor_options
@config_options(ExtractConfig, ("compression", "max_pixels", "part_images"))
@click.option("--overwrite", is_flag=True, help="Replace an existing store built from other arguments.")
@click.pass_context
def extract(ctx, folders, out, workers, executor, address, overwrite, **fields):
    """Cut 32 x 32 patches from image FOLDERS into an HDF5 patch store.

    Each folder is ImageFolder layout (class subfolders) or flat. Bad files are skipped with
    a warning and listed in the manifest; a killed run resumes where it stopped. With
    --executor ray the images are decoded by the tasks of a Ray cluster (every node must see
    FOLDERS and --out at the same paths); the store is the same.
    """
    with user_errors():
        cfg = ExtractConfig(**fields)
        with Progress("extracting images", show_progress(ctx)) as bar:
            res = extract_store(list(folders), out, cfg, workers=workers, overwrite=overwrite, progress=bar,
                                executor=make_executor(executor, address))
    m = res.manifest
    if res.already_complete:
        click.echo(f"{out} is already complete with these arguments ({m.get('n_patches', '?')} patches); nothing to do")
        return
    click.echo(f"wrote {out}: {m['n_patches']} patches from {m['n_images']} images in {m['n_classes']} classes, "
               f"{m['n_skipped']} skipped, {human_bytes(m['bytes_on_disk'])}, {res.seconds:.1f} s"
               + (" (resumed)" if res.resumed else ""))


@click.group()
def store():
    """Inspect a patch store, or check every byte of it (verify)."""


@store.command("info")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
def store_info(path, as_json):
    """Print counts, config, identity and size on disk of the store at PATH.

    Opening a store is cheap: it checks the format, the store's id and the fingerprint recorded
    at extraction, not the patches. Each chunk read later is checked by its HDF5 checksum;
    `patchcollide store verify` reads everything and recomputes the fingerprint.
    """
    with user_errors(), PatchStore(path) as s:
        info = s.info()
    if as_json:
        echo_json(info)
        return
    c = info["config"]
    click.echo(f"store        {info['path']}")
    click.echo(f"patches      {info['n_patches']} from {info['n_images']} images, {info['n_classes']} classes")
    click.echo(f"size         {human_bytes(info['bytes_on_disk'])} ({info['bytes_per_patch']:.0f} bytes/patch)")
    click.echo(f"config       resize={c['resize']} stride={c['stride']} fraction={c['fraction']} seed={c['seed']} "
               f"compression={c['compression']}")
    click.echo(f"id           {info['store_id']}")
    click.echo(f"fingerprint  {info['fingerprint']}")
    click.echo(f"created      {info['created']}")


@store.command("verify")
@click.argument("path", type=click.Path(dir_okay=False), default=os.path.join(DEFAULT_INDEX, STORE_FILE),
                required=False)
@click.pass_context
def store_verify(ctx, path):
    """Check every byte of the store at PATH [default: index/patches.h5] against its fingerprint.

    Every chunk's checksum is checked and the SHA-256 fingerprint of all patches and provenance
    is compared with the one recorded at extraction (and the image tables with theirs). Prints
    one OK line, or one error line (exit 2) naming the fix: rebuild the store with
    `patchcollide extract ... --overwrite`, or restore a copy.
    """
    with user_errors(), PatchStore(path) as s, Progress("verifying the store", show_progress(ctx)) as bar:
        r = s.verify(progress=bar)
    click.echo(f"OK {path}: {r['n_patches']} patches from {r['n_images']} images match fingerprint "
               f"{r['fingerprint'][:12]}, {human_bytes(r['bytes_on_disk'])} read in {r['seconds']:.1f} s"
               + ("" if r["checksums"] else " (a store written before chunk checksums: rebuild it to have them)"))


@click.group()
def index():
    """Build, query, evaluate and verify the FAISS patch index.

    \b
    Opening an index (search, eval, collide, batch) checks index.faiss against index.json: its
    size and first and last MiB, and up to 1 GiB the sha256 of all of it; every value of
    index.json; the store's id and recorded fingerprint. `patchcollide index verify` reads
    everything, whatever the size.
    """


_index_dir = click.option("-i", "--index", "index_dir", default=DEFAULT_INDEX, show_default=True,
                          type=click.Path(file_okay=False), help="Index directory.")
_store_opt = click.option("--store", "store_path", default=None, type=click.Path(dir_okay=False),
                          help="Patch store [default: INDEX/patches.h5].")


@index.command("build")
@_index_dir
@_store_opt
@config_options(IndexConfig)
@click.pass_context
def index_build(ctx, index_dir, store_path, **fields):
    """Train and fill a FAISS index over the patch store."""
    with user_errors():
        cfg = IndexConfig(**fields)
        with Progress("k-means (IVF lists)", show_progress(ctx)) as kbar, \
                Progress("adding patches, writing the index", show_progress(ctx)) as bar:
            m = build_index(index_dir, store_path, cfg, progress=bar, train_progress=kbar)
    click.echo(f"wrote {os.path.join(index_dir, 'index.faiss')}: {m['factory']}, {m['n']} patches, "
               f"{human_bytes(m['bytes'])}, trained on {m['train_size']} in {m['seconds']['train']:.1f} s, "
               f"total {m['seconds']['total']:.1f} s")


@index.command("search")
@click.argument("image", type=click.Path(dir_okay=False))
@_index_dir
@_store_opt
@config_options(SearchConfig)
@click.option("--mosaic", default=None, type=click.Path(dir_okay=False), help="Write query patches beside neighbours.")
@click.option("-o", "--out", "out_npz", default=None, type=click.Path(dir_okay=False),
              help="Save ids, distances and source coordinates (.npz).")
def index_search(image, index_dir, store_path, mosaic, out_npz, **fields):
    """k nearest stored patches for every location of a grid on IMAGE."""
    with user_errors():
        cfg = SearchConfig(**fields)
    k = cfg.k
    with user_errors(), PatchIndex(index_dir, store_path, nprobe=cfg.nprobe, store_option="--store") as pidx:
        if not os.path.isfile(image):
            raise UserError(f"query image {image!r} does not exist; pass an image file")
        res = pidx.search_image(image, k=k, stride=cfg.grid_stride)
        if out_npz:
            with open(out_npz, "wb") as fh:  # a file object: numpy would otherwise append .npz to the name
                np.savez(fh, ids=res.ids, distances=res.distances, query_yx=res.query_yx, sources=res.sources)
        if mosaic:
            nb = pidx.store.get(res.ids[:, : min(k, 8)].ravel()).reshape(len(res.ids), -1, 32, 32, 3)
            save_png(neighbour_mosaic(res.image, res.query_yx, nb, res.distances), mosaic)
    L = len(res.ids)
    click.echo(f"{L} locations x {k} neighbours; median nearest L2 {float(np.median(res.distances[:, 0])):.1f}"
               f" (0..255 pixel units)")
    if out_npz:
        click.echo(f"wrote {out_npz}")
    if mosaic:
        click.echo(f"wrote {mosaic}")


@index.command("eval")
@click.option("--queries", "queries", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="Held-out query image (repeatable); every grid patch is a query.")
@_index_dir
@_store_opt
@config_options(EvalConfig)
@click.option("--json", "as_json", is_flag=True, help="Print the evaluation as JSON.")
def index_eval(queries, index_dir, store_path, as_json, **fields):
    """recall@k of the index against exact search, and queries per second of both."""
    with user_errors():
        cfg = EvalConfig(**fields)
    k = cfg.k
    for q in queries:
        if not os.path.isfile(q):
            raise UserError(f"query image {q!r} does not exist; pass an image file to --queries")
    with user_errors(), PatchIndex(index_dir, store_path, nprobe=cfg.nprobe, k_factor=cfg.k_factor,
                                   store_option="--store") as pidx:
        qp = query_patches(list(queries), pidx.preprocess, cfg.grid_stride)
        with Progress("exact search (ground truth)", show_progress(click.get_current_context()) and not as_json) as bar:
            r = evaluate(pidx, qp, k=k, device=cfg.device, repeats=3, progress=bar)
    if as_json:
        echo_json(r)
        return
    click.echo(f"{r['factory']}  nprobe={r['nprobe']} k_factor={r['k_factor']}  {r['nq']} queries")
    click.echo(f"recall@{k}   {r['recall']:.4f}")
    click.echo(f"index       {r['qps_index']:.1f} queries/s")
    click.echo(f"exact       {r['qps_exact']:.1f} queries/s  (index is {r['speedup']:.1f}x faster)")


@index.command("verify")
@_index_dir
@_store_opt
@click.pass_context
def index_verify(ctx, index_dir, store_path):
    """Check every byte of the index and its store against the record of their build.

    Opening an index checks the size, first and last MiB of index.faiss, and hashes it whole
    only up to 1 GiB; this computes the SHA-256 of all of it (recorded in index.json by `index
    build`) whatever its size, checks index.json's own digest and recomputes the
    store's fingerprint (as `store verify`). Prints one OK line, or one error line (exit 2)
    naming the damaged file and the fix (`patchcollide index build`).
    """
    with user_errors(), Progress("verifying index.faiss (bytes)", show_progress(ctx)) as bar, \
            Progress("verifying the store", show_progress(ctx)) as sbar:
        r = verify_index(index_dir, store_path, store_option="--store", progress=bar, store_progress=sbar)
    s = r["store"]
    click.echo(f"OK {r['index']}: sha256 {r['sha256'][:12]} matches ({r['factory']}, {r['n']} patches, "
               f"{human_bytes(r['bytes'])}); store {s['path']}: fingerprint {s['fingerprint'][:12]} matches "
               f"({s['n_patches']} patches from {s['n_images']} images); {r['seconds']:.1f} s")
