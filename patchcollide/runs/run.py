"""One collision run end to end, into a run directory; and the polytope check on a finished run.

Run directory (written under ``NAME.tmp-*`` and renamed into place only when complete)::

    source.png, target.png        the inputs as the model saw them (size x size; report.json's
                                  inputs.transform says how each got there)
    vertex_0.png ... vertex_{V-1}.png   8-bit vertices
    argmax_0.png ... argmax_{V-1}.png   patch mode: each vertex with every pixel taken from its
                                  heaviest candidate alone (a pure composition of stored pixels)
    indicator.png                 purple boxes where the vertices differ most
    contact_sheet.png             source, target, vertices, indicator
    loss.png                      loss terms and relative error per step
    state.npz                     the float vertices (V, 3, H, W) before 8-bit rounding; final
                                  logits theta (V, H*W, slots) and their entries into the
                                  candidates (patch mode) or pixels, candidate ids and
                                  locations, target pre-activation and units (load_run reads it)
    report.json                   config, versions, model and weights identity, the target's
                                  values at the vertices' units, per-vertex metrics (float and
                                  PNG read back; push, mixing), polytope check
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time

import numpy as np
import torch

from ..core.files import atomic_open, check_writable, is_run, process_seconds, staged_dir, versions, write_report
from ..core.formats import INDEX_DIR, RANDOM_LABEL, RANDOM_NOTICE, RUN_KIND, polytope_samples
from ..engine.checkpoints import EVERY
from ..engine.checkpoints import NAME as CHECKPOINT
from ..engine.checkpoints import PROGRESS
from ..engine.checkpoints import (Checkpointer, CheckpointError, DamagedCheckpoint, Interrupted, StopSignals,
                                  partial_dir, restoring)
from ..engine.collide import Clock, CollideResult, collide, quantised_metrics
from ..engine.config import CollideConfig, CollideError, not_installed
from ..engine.terms import concrete, frontier_of
from ..models.judge import check_apart, judge_run, load_judge
from ..models.build import Tap, input_fit, load_tap, resolve_device, tap_on
from ..models.weights import imagenet_weights, resolve_weights
from ..engine.target import Target
from ..engine.polytope import difference_boxes, extent, pairwise_l2, sample_polytope
from ..offline.knn import PatchIndex
from .inputs import (Resume, SampleConfig, check_complete, check_k, check_out_dir, check_start, expected_bytes,
                     fit_input, read_picture, read_report, read_state, read_vertices, refuse_taken, run_lock)
from .sizes import warn_size
from .pictures import contact_sheet, indicator_image, loss_plot, read_png, save_png, to_uint8

log = logging.getLogger(__name__)



def load_pair(source: str, target: str, config: CollideConfig,
              geometry: str = "imagenet") -> tuple[np.ndarray, np.ndarray]:
    """Source and target as (size, size, 3) uint8 with the config's fit (``fit_input``)."""
    return load_input(source, config, "--source", geometry), load_input(target, config, "--target", geometry)


def load_input(path: str, config: CollideConfig, name: str = "image", geometry: str = "imagenet") -> np.ndarray:
    """One input of a run as (size, size, 3) uint8 (``fit_input`` without its record)."""
    return fit_input(path, config, name, geometry)[0]


def resolved_fit(config: CollideConfig, geometry: str) -> str:
    """``config.fit`` with auto made concrete for an input that is not size x size (one that is
    is used as given): report.json's ``resolved.fit``."""
    return geometry if config.fit == "auto" else config.fit


def run_collide(source: str, target: str, out: str, config: CollideConfig = CollideConfig(), arch: str = "vgg16",
                layer: str = "fc6", weights: str = "imagenet", index_dir: str | None = INDEX_DIR, tap: Tap | None = None,
                pindex=None, overwrite: bool = False, progress=None, target_stats: Target | None = None,
                checkpoint_dir: str | None = None, checkpoint_every: int = EVERY,
                resume: Resume = Resume.FRESH, again: str | None = None, judge=None) -> dict:
    """Collide ``source`` -> ``target`` and write the run directory ``out``. Returns the report.

    target_stats: the target's precomputed ``collide.target_of`` (see ``collide.collide``).

    Checkpoints (checkpoints.py) go to ``checkpoint_dir`` (default ``OUT.partial``) every
    ``checkpoint_every`` steps, after the last step and on SIGINT/SIGTERM, and are removed
    once ``out`` is complete. resume (``Resume``): FRESH refuses to start over an interrupted
    run's checkpoint unless ``overwrite``; CONTINUE goes on from it (an error when there is
    none); IF_SAME_RUN goes on from one of this very run and starts afresh otherwise (batch jobs).
    again: the command that continues the run, for messages (default ``collide --resume``).
    judge: a ``judge.Judge`` that reads the source, the target and every vertex (report.json's
    ``judge``); None for none.
    """
    if not isinstance(resume, Resume):
        raise TypeError(f"resume must be a runs.inputs.Resume, got {resume!r}")
    run = dict(source=source, target=target, out=out, config=config, arch=arch, layer=layer, weights=weights,
               index_dir=index_dir, tap=tap, pindex=pindex, overwrite=overwrite, progress=progress,
               target_stats=target_stats, checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
               resume=resume, again=again, judge=judge)
    if checkpoint_dir is not None:  # a batch job: the batch holds the job's lock
        return _run_collide(**run)
    with run_lock(out):
        return _run_collide(**run)


FAR_RETRIEVAL = 1.5  # source patches this many times farther from their neighbours than the store's own: warn
STORE_SAMPLE = 256  # store patches whose own neighbours give the store's typical distance


def retrieval_quality(pindex, candidates: dict, k: int, seed: int = 0) -> dict:
    """How well the store covers the source (report.json's "retrieval"): the mean L2 (0..255
    pixel units) from each source patch to its k neighbours, against the store's typical
    distance (the same for a seeded sample of stored patches to their k nearest others). A
    ratio over FAR_RETRIEVAL is one warning: the store is small or unsuited for this source, and
    the collision and the look both suffer."""
    n = len(pindex.store)
    source = float(np.mean(candidates["distances"][:, :k]))
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(n, size=min(STORE_SAMPLE, n), replace=False))
    own, _ = pindex.search_patches(pindex.store.get(ids), min(k + 1, n))
    typical = float(np.mean(own[:, 1:])) if own.shape[1] > 1 else float("nan")  # rank 0: the patch itself
    ratio = source / typical if typical > 0 else float("inf")
    rec = {"source_mean_distance": round(source, 2), "store_typical_distance": round(typical, 2),
           "ratio": round(ratio, 3), "store_patches": n, "source_locations": int(candidates["distances"].shape[0]),
           "units": f"mean L2 to the {k} nearest patches, 0..255 pixel units of 32 x 32 x 3"}
    if ratio > FAR_RETRIEVAL:
        log.warning("the store covers this source poorly: its patches are %.1fx farther from their neighbours "
                    "(%.0f) than stored patches are from theirs (%.0f), with %s patches in the store; expect a looser "
                    "collision and a vertex that reads less like its source (extract more images like it)",
                    ratio, source, typical, f"{n:,}")
    return rec


def class_name(tap: Tap, label: int) -> str | None:
    """The class name of ``label`` for torchvision's published weights (their meta["categories"]);
    None for random or user weights, whose classes nothing names."""
    if tap.weights.kind != "imagenet":
        return None
    names = imagenet_weights(tap.arch).meta.get("categories") or []
    return names[label] if 0 <= label < len(names) else None


_size_warned: set = set()


def warn_pretrained_size(tap: Tap, size: int) -> None:
    """Once per process and (model, size): pretrained weights run at a size they were not trained at."""
    if tap.weights.kind == "imagenet" and size != 224 and (tap.arch, size) not in _size_warned:
        _size_warned.add((tap.arch, size))
        log.warning("--size %d: %s's ImageNet weights were trained at 224 x 224; at %d its classes and features "
                    "are less reliable (use --size 224 for a real study)", size, tap.arch, size)


def _run_collide(*, source: str, target: str, out: str, config: CollideConfig, arch: str, layer: str, weights: str,
                 index_dir: str | None, tap: Tap | None, pindex, overwrite: bool, progress, target_stats: Target | None,
                 checkpoint_dir: str | None, checkpoint_every: int, resume: Resume, again: str | None, judge) -> dict:
    """``run_collide`` and ``resume_collide`` once the run is theirs: the checks, the inputs, the
    index and the model, the optimisation (checkpointed), the run folder."""
    clock, started = Clock(), process_seconds()
    ckdir = checkpoint_dir or partial_dir(out)
    again = again or f"patchcollide collide --resume {out}"
    check_run(out, config, ckdir, again, resume, overwrite=overwrite, index_dir=index_dir, weights=weights, tap=tap,
              judge=judge)
    src, tgt, meta = run_inputs(source, target, config, index_dir, arch=arch, weights=weights, tap=tap)
    own_index = None
    if config.space.needs_index and pindex is None:
        pindex = own_index = PatchIndex(index_dir)  # before the model: a bad index fails in a second
    try:
        if config.space.needs_index:
            check_k(config.k, len(pindex.store), index_dir)
        clock.lap("inputs")
        tap, weights, dev = run_model(tap, arch, layer, weights, config)
        clock.lap("model")
        ck = run_checkpointer(ckdir, checkpoint_every, meta, config, tap, arch=arch, layer=layer, weights=weights,
                              overwrite=overwrite, judge=judge)
        res = optimise_run(out, ck, resume, again, tap, src, tgt, config, index=pindex, progress=progress,
                           target=target_stats)
        retrieval = retrieval_quality(pindex, res.candidates, config.k) if res.candidates is not None else None
        # where the time before the first step went: the process before this call (interpreter,
        # imports, command line), then inputs, model, target, retrieval, setup; then the steps
        res.timings = {"process": started, **clock.laps, **(res.timings or {})}
    finally:
        if own_index is not None:
            own_index.close()
    report = write_checkpointed(out, ck, again, res, src, tgt, tap, config, meta,
                                overwrite=overwrite or resume is Resume.IF_SAME_RUN, device=dev, judge=judge,
                                retrieval=retrieval)
    if checkpoint_dir is None:
        ck.discard()
    return report


def check_run(out: str, config: CollideConfig, ckdir: str, again: str, resume: Resume, *, overwrite: bool,
              index_dir: str | None, weights: str, tap: Tap | None, judge) -> None:
    """The checks before anything loads: ``out`` and the checkpoint (``inputs.check_start``, the
    checks the CLI makes before torch), free space, the size against the index and weights, and
    a judge that is not the attacked net. A FRESH run with ``overwrite`` deletes an unfinished
    run's checkpoint here."""
    check_start(out, overwrite, ckdir, again, resume)
    if resume is Resume.FRESH and os.path.isfile(os.path.join(ckdir, CHECKPOINT)):  # --overwrite: start over
        shutil.rmtree(ckdir, ignore_errors=True)
    check_writable(out, expected_bytes(config), CollideError)
    warn_size(config.size, index_dir if config.space.needs_index else None, weights)
    if judge is not None:  # a hash of the file, before anything loads
        check_apart(judge, tap.weights if tap is not None else weights)


def run_inputs(source: str, target: str, config: CollideConfig, index_dir: str | None, *, arch: str, weights: str,
               tap: Tap | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """The source and the target as (size, size, 3) uint8, with fit auto's geometry taken from the
    weights' names (or the given model's), so nothing loads before the inputs; and report.json's
    ``inputs`` (their paths, the index's, how each was fitted)."""
    geometry = input_fit(tap.arch, tap.weights.kind) if tap is not None else input_fit(arch, weights)
    (src, src_how), (tgt, tgt_how) = (fit_input(source, config, "--source", geometry),
                                      fit_input(target, config, "--target", geometry))
    meta = {"source": os.path.abspath(source), "target": os.path.abspath(target),
            "index": os.path.abspath(index_dir) if config.space.needs_index and index_dir else None,
            "transform": {"source": src_how, "target": tgt_how}}
    return src, tgt, meta


def run_model(tap: Tap | None, arch: str, layer: str, weights: str,
              config: CollideConfig) -> tuple[Tap, str, torch.device]:
    """The run's model on the run's device (resolved once: the model moves there once), the
    caller's ``tap`` or ``arch`` tapped at ``layer``; with the weights the run records, "auto"
    made concrete once, so that a resume goes on with the same weights."""
    dev = resolve_device(config.device)
    if tap is None:
        weights = resolve_weights(weights, arch)
    tap = tap_on(tap or load_tap(arch, layer, weights, seed=config.seed), dev)
    warn_pretrained_size(tap, config.size)
    return tap, weights, dev


def run_checkpointer(ckdir: str, every: int, meta: dict, config: CollideConfig, tap: Tap, *, arch: str, layer: str,
                     weights: str, overwrite: bool, judge) -> Checkpointer:
    """The run's checkpoints in ``ckdir``, keyed by its inputs, config and model, each carrying
    what ``resume_collide`` needs to start the run again (``static["run"]``)."""
    ck = Checkpointer(ckdir, {"inputs": meta, "config": dataclasses.asdict(config), "model": tap.identity()},
                      every=every)
    ck.static["run"] = {"source": meta["source"], "target": meta["target"], "arch": arch, "layer": layer,
                        "weights": _abs_if_file(weights), "index_dir": meta["index"], "overwrite": overwrite,
                        "judge": None if judge is None else [judge.weights.name, judge.arch]}
    return ck


def optimise_run(out: str, ck: Checkpointer, resume: Resume, again: str, tap: Tap, src: np.ndarray, tgt: np.ndarray,
                 config: CollideConfig, *, index, progress, target: Target | None) -> CollideResult:
    """``collide`` from the checkpoint ``resume`` asks for (none for FRESH), saving to ``ck``.
    IF_SAME_RUN starts afresh, with one warning, from a checkpoint that cannot continue this run
    or whose state does not restore. SIGINT/SIGTERM: ``Interrupted`` naming ``again``."""
    state = None
    if resume is Resume.CONTINUE:
        state = ck.load()
    elif resume is Resume.IF_SAME_RUN and ck.exists():
        try:
            state = ck.load()
        except CheckpointError as e:  # one line: the step count the user expected is lost
            start_afresh(out, ck, e)
    if state is not None:
        log.info("resuming %s from step %d/%d", out, state["step"], config.steps)
    with StopSignals() as stop:
        ck.stop = stop
        try:
            try:
                return collide(tap, src, tgt, config, index=index, progress=progress, target=target, checkpoint=ck,
                               resume=state)
            except DamagedCheckpoint as e:  # read, but its state does not restore: before any step
                if resume is not Resume.IF_SAME_RUN or state is None:
                    raise
                start_afresh(out, ck, e)
                return collide(tap, src, tgt, config, index=index, progress=progress, target=target, checkpoint=ck)
        except Interrupted as e:
            how = again if "`" in again else f"`{again}`"  # a phrase that quotes its own command is not quoted again
            raise Interrupted(f"{e}; continue with {how}", e.signum) from None


def write_checkpointed(out: str, ck: Checkpointer, again: str, res: CollideResult, src: np.ndarray, tgt: np.ndarray,
                       tap: Tap, config: CollideConfig, meta: dict, **kw) -> dict:
    """``write_run`` (``kw``: its keywords) for a run whose optimised state is in ``ck``: a failure
    says where that state is and how to write the run without optimising again."""
    try:
        return write_run(out, res, src, tgt, tap, config, meta, **kw)
    except CollideError as e:  # --out taken meanwhile by something that holds no lock
        if ck.saved_to != ck.path:
            raise
        raise CollideError(f"{e}; the optimised state is kept in {ck.path}: `{again} --overwrite` writes it over "
                           "without optimising again") from None
    except OSError as e:
        where = ck.saved_to or "nowhere (the checkpoint could not be written either)"
        fix = (f"free space, then `{again}` writes the run without optimising again" if ck.saved_to == ck.path else
               f"free space, move both files of {os.path.dirname(ck.saved_to or '')} (the checkpoint and its sha256 "
               f"in {PROGRESS}) into {ck.directory} and run `{again}`: it writes the run without optimising again")
        raise CollideError(f"could not write the run to {out} ({e.strerror or e}); the optimised state is saved "
                           f"in {where}: {fix}") from e  # the cause: a batch stops on a full disk


def start_afresh(out: str, ck: Checkpointer, e: CheckpointError) -> None:
    """``Resume.IF_SAME_RUN`` (a batch job) with a checkpoint that cannot continue the run: one warning
    line, the checkpoint deleted; the run then starts from step 1."""
    if isinstance(e, DamagedCheckpoint):
        log.warning("%s: starting from step 1, as its checkpoint %s is damaged (%s); the damaged checkpoint is "
                    "deleted", out, e.path, e.why)
    else:
        log.warning("%s: starting from step 1, as its checkpoint cannot continue this run (%s); the old "
                    "checkpoint is deleted", out, str(e).split(";")[0])
    ck.discard()


def _abs_if_file(weights: str) -> str:
    """A weights file as an absolute path (a resume may start elsewhere); names stay names."""
    return os.path.abspath(weights) if os.path.isfile(weights) else weights


def resume_collide(out: str, progress=None, checkpoint_every: int = EVERY, overwrite: bool = False,
                   on_resume=None) -> dict:
    """Go on with the run that was writing ``out`` (``collide --resume``) from its checkpoint,
    with the inputs, settings and model it started with. Returns the report.

    overwrite: replace a complete run found at ``out`` (one this checkpoint did not write is
    refused otherwise; a run started with --overwrite keeps it). on_resume(step, steps):
    called once the checkpoint is read, with the step the run goes on from."""
    with run_lock(out):  # before the checkpoint is read: a second writer is refused at once
        ck = Checkpointer(partial_dir(out), {})
        if not ck.exists():
            if is_run(out, RUN_KIND):
                raise CollideError(f"{out} is a finished run; nothing to resume (run `patchcollide sample --out {out}` "
                                   "or start a new run)")
            raise CollideError(f"{out}: no checkpoint to resume at {ck.path}; start the run with --out {out}")
        saved = ck.read()  # a damaged one: DamagedCheckpoint, before anything is written or said
        with restoring(ck.path):  # what a resume reads of it, read here once
            r = {k: saved["run"][k] for k in ("source", "target", "arch", "layer", "weights", "index_dir", "overwrite")}
            r["judge"] = saved["run"].get("judge")
            missing = not_installed(saved["key"]["config"])
            if missing:
                raise CollideError(f"{out}: its checkpoint's config.{missing[0]} {missing[1]}")
            config = CollideConfig(**saved["key"]["config"])
        refuse_taken(out, partial_dir(out), f"patchcollide collide --resume {out}", r["overwrite"] or overwrite)
        judge = load_judge(*r["judge"]) if r["judge"] else None
        if on_resume is not None:
            on_resume(saved["step"], config.steps)
        return _run_collide(source=r["source"], target=r["target"], out=out, config=config, arch=r["arch"],
                            layer=r["layer"], weights=r["weights"], index_dir=r["index_dir"], tap=None, pindex=None,
                            overwrite=r["overwrite"] or overwrite, progress=progress, target_stats=None,
                            checkpoint_dir=None, checkpoint_every=checkpoint_every, resume=Resume.CONTINUE,
                            again=None, judge=judge)


def write_run(out: str, res: CollideResult, src: np.ndarray, tgt: np.ndarray, tap: Tap, config: CollideConfig,
              meta: dict, overwrite: bool = False, device=None, judge=None, retrieval: dict | None = None) -> dict:
    """Write every output of a run into ``out`` atomically; returns the report. device: where
    the PNGs read back are measured (default: the config's); retrieval: ``retrieval_quality``'s
    record (patch mode), report.json's "retrieval"."""
    with staged_dir(out) as tmp:
        save_png(_img(src), os.path.join(tmp, "source.png"))
        save_png(_img(tgt), os.path.join(tmp, "target.png"))
        v8 = to_uint8(res.vertices)
        for i, v in enumerate(v8):
            save_png(_img(v), os.path.join(tmp, f"vertex_{i}.png"))
        if res.argmax_vertices is not None:
            for i, v in enumerate(to_uint8(res.argmax_vertices)):
                save_png(_img(v), os.path.join(tmp, f"argmax_{i}.png"))
        back = np.stack([read_png(os.path.join(tmp, f"vertex_{i}.png")) for i in range(len(v8))])
        png_metrics = quantised_metrics(tap, back, res.target, config.device if device is None else device)
        boxes = difference_boxes(back)
        save_png(indicator_image(back[0], boxes), os.path.join(tmp, "indicator.png"))
        random = tap.weights.kind == "random"
        items = [("source", src), ("target", tgt)] + [(f"vertex {i}", v) for i, v in enumerate(back)]
        items.append(("indicator", np.asarray(indicator_image(back[0], boxes, scale=1))))
        sheet = contact_sheet(items, scale=max(1, 224 // config.size), banner=RANDOM_NOTICE if random else None)
        save_png(sheet, os.path.join(tmp, "contact_sheet.png"))
        loss_plot(res.history, os.path.join(tmp, "loss.png"),
                  title=f"{tap.arch}:{tap.layer}, {config.mode}, {len(back)} vertices" + (f" - {RANDOM_LABEL}" if random else ""))
        state = {k: v.numpy() for k, v in res.param_state.items()}
        state.update(target_z=res.target.z.numpy(), units=res.target.units.numpy(),
                     vertices=res.vertices.numpy().astype(np.float32))
        if res.candidates is not None:
            state.update(candidate_ids=res.candidates["ids"], candidate_yx=res.candidates["yx"],
                         candidate_distances=res.candidates["distances"])
        with atomic_open(os.path.join(tmp, "state.npz"), "wb") as fh:
            np.savez(fh, **state)
        used = concrete(config, tap)  # the auto settings as the run took them
        report = {
            "kind": RUN_KIND, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "notice": RANDOM_NOTICE if random else None,
            "config": dataclasses.asdict(config),
            "resolved": {"lr": config.learning_rate, "push_margin": used.push_margin,  # None or auto made concrete
                         "fork": used.fork, "fork_step": used.phases()["fork"], "least_change": used.least_change,
                         "distinct_view": used.distinct_view,
                         "device": resolve_device(config.device if device is None else device).type,
                         "fit": resolved_fit(config, input_fit(tap.arch, tap.weights.kind)),
                         "term_settings": {name: config.term_settings(name) for name in config.terms}},
            "model": tap.identity(), "inputs": meta, "versions": versions(),
            "target": {"label": res.target.label, "top_prob": res.target.prob, "units": res.target.units.tolist(),
                       "unit_values": res.target.z[res.target.units].tolist(),
                       "n_active": int((res.target.z > 0).sum()), "dim": int(res.target.z.numel())},
            "steps": res.steps, "converged": res.converged, "seconds": round(res.seconds, 3),
            "timings": res.timings,
            "least_change_frontier": None if not used.least_change else frontier_of(tap),
            "vertices": {"float": res.metrics, "png": png_metrics, "mixing": res.mixing, "boxes": boxes,
                         "mean_pairwise_l2": pairwise_l2(back), "size": config.size,
                         "extent": extent(back, src, tgt)},
            "distances": {"source_target_l2": pairwise_l2(np.stack([src, tgt])),
                          "vertex_source_l2": source_distances(back, src)},
            "history": res.history,
            "retrieval": retrieval,
        }
        if judge is not None:
            report["judge"] = judge_run(judge, src, tgt, back)
        write_report(os.path.join(tmp, "report.json"), report)
        check_out_dir(out, overwrite)  # again: something may have appeared while the run was going
    return report


def source_distances(vertices_u8: np.ndarray, source_u8: np.ndarray) -> list[float]:
    """L2 distance of each vertex (V, H, W, 3) uint8 to the source (H, W, 3) uint8, in 0..255
    pixel units (the paper's units), one float per vertex."""
    d = vertices_u8.reshape(len(vertices_u8), -1).astype(np.float64) - source_u8.reshape(1, -1).astype(np.float64)
    return np.linalg.norm(d, axis=1).tolist()


def judge_for_run(report: dict):
    """The judge a run was read by, from its recorded identity (None for a run without one)."""
    j = (report.get("judge") or {}).get("model")
    if not j:
        return None
    return rebuilt(j, lambda weights: load_judge(weights, j["arch"]), "judge weights",
                   "restore them or pass --judge")


def rebuilt(identity: dict, load, what: str, fix: str):
    """A model (tap or judge) made again from its recorded identity (report.json's "model" or
    "judge"."model": kind, and for kind "file" its name and sha256) by ``load(weights)``, where
    weights is the file's name or the kind (one of WEIGHT_KINDS). A weights file whose sha256
    differs from the recorded one is a CollideError naming ``what`` and the ``fix``."""
    weights = identity["name"] if identity["kind"] == "file" else identity["kind"]
    model = load(weights)
    if identity["kind"] == "file" and model.weights.sha256 != identity["sha256"]:
        raise CollideError(f"{what} {identity['name']} changed since the run (sha256 differs); {fix}")
    return model


def _img(a: np.ndarray):
    from PIL import Image

    return Image.fromarray(a)


@dataclasses.dataclass
class Run:
    """A finished run as ``load_run`` gives it.

    vertices: (V, 3, H, W) float32 in [0, 1], the optimised images before 8-bit rounding
    (runs written before they were saved: the PNGs read back, ``exact`` False).
    png: (V, H, W, 3) uint8, the saved vertex PNGs. config: the CollideConfig it ran with.
    metrics: report.json's "vertices" (float, png, mixing, ...); target: its "target".
    mixing (patch mode, else None): per vertex and pixel the kept candidates' normalised
    ``weights`` (V, H*W, M) float32 (0 on padding) and the store ``patch_ids`` (V, H*W, M)
    int64 they come from (-1 on padding), with ``pixel`` (V, H*W, M, 2): the (y, x) inside
    that 32 x 32 patch, or, with ``config.window`` > 32, inside its window x window context in
    the patch's source image (the patch at (window - 32) / 2 in both axes; ``extract.context_windows``).
    """

    path: str
    config: CollideConfig
    report: dict
    vertices: np.ndarray
    png: np.ndarray
    metrics: dict
    target: dict
    mixing: dict | None
    exact: bool

    def __repr__(self) -> str:
        """A few lines (the whole report and arrays would be tens of thousands of characters)."""
        png = self.metrics.get("png", {})
        err, push = ([x for x in png.get(k) or [] if x is not None] for k in ("rel_error", "push"))  # null: NaN
        V, _, H, W = self.vertices.shape
        m = self.report.get("model", {})
        lines = [f"Run({self.path!r})",
                 f"  {V} vertices, {H} x {W}, mode {self.config.mode}, {self.report.get('steps', '?')} steps, "
                 f"converged: {self.report.get('converged')}",
                 f"  model {m.get('arch', '?')} {m.get('layer', '?')}, weights: {m.get('label', m.get('kind', '?'))}"]
        if err:
            lines.append(f"  PNG relative error {min(err):.3g} .. {max(err):.3g} (tol {self.config.tol:g})"
                         + (f", push {min(push):.3g} .. {max(push):.3g}" if push else ""))
        poly = self.report.get("polytope")
        if poly:
            lines.append(f"  polytope: {polytope_samples(self.report)} samples, "
                         f"{100 * poly['share_target_class']:.1f}% in the target's class")
        lines.append("  fields: vertices (V, 3, H, W) float32, png (V, H, W, 3) uint8, mixing, metrics, target, "
                     "config, report")
        return "\n".join(lines)


def load_run(path: str) -> Run:
    """Load a finished ``collide`` run (or a batch job's folder) for analysis: the float
    vertices, the PNGs, the mixing weights and their source patches, the metrics and the
    config. Needs neither the model nor the index. A run whose report.json, state.npz or vertex
    PNGs are missing or damaged is one CollideError naming the file and the fix (``check_complete``,
    ``read_state``, ``read_vertices``)."""
    report = read_report(path)
    config = check_complete(path, report)
    png = read_vertices(path, config)
    state = read_state(path, config, report)
    exact = "vertices" in state
    vertices = (state["vertices"] if exact else png.transpose(0, 3, 1, 2) / np.float32(255)).astype(np.float32)
    mixing = config.space.mixing_from_state(state, config.window)
    return Run(path=path, config=config, report=report, vertices=vertices, png=png, metrics=report["vertices"],
               target=report["target"], mixing=mixing, exact=exact)


def tap_for_run(report: dict, seed: int = 0) -> Tap:
    """Rebuild the model a run used, from its recorded identity (a report ``check_report``
    passed; ``seed``: its config's, which random weights are made from)."""
    m = report["model"]
    return rebuilt(m, lambda weights: load_tap(m["arch"], m["layer"], weights, seed=seed), "weights file",
                   "restore it or run collide again")


def run_sample(run_dir: str, samples: int = SampleConfig.samples, seed: int = SampleConfig.seed,
               batch_size: int = SampleConfig.batch_size, device: str = SampleConfig.device,
               dataset_images: np.ndarray | None = None, tap: Tap | None = None, progress=None, judge=None) -> dict:
    """The polytope check on a finished run: results go into its report.json (rewritten atomically).

    At a ReLU layer the convex combinations of colliding vertices collide only approximately
    (the layer before is not linear in the input): the samples' errors are measured and
    reported beside the vertices'.

    dataset_images (N, H, W, 3) uint8 at the run's size give the mean distance between
    dataset images to compare the vertices' with (the paper's Tables 2, 4, 6).

    judge: a ``judge.Judge`` that also reads every sample (default: the run's own judge, if it
    had one); a judge given here that the run did not have reads its source and vertices too.

    The settings and their defaults are ``SampleConfig``'s. Settings out of bounds and a run
    whose report.json, state.npz or pictures are missing or damaged are one CollideError each,
    before the model loads.
    """
    SampleConfig(samples=samples, seed=seed, batch_size=batch_size, device=device)
    report = read_report(run_dir)
    config = check_complete(run_dir, report)
    vertices = read_vertices(run_dir, config)
    state = read_state(run_dir, config, report)
    tz, units = torch.from_numpy(state["target_z"]), torch.from_numpy(state["units"])
    target = Target(tz, units, report["target"]["label"], report["target"]["top_prob"])
    tap = tap or tap_for_run(report, config.seed)
    judge = judge or judge_for_run(report)
    if judge is not None:
        check_apart(judge, report.get("model"), "the run's model")
    if judge is not None and (report.get("judge") or {}).get("model") != judge.identity():
        src, tgt = (read_picture(run_dir, f, config.size) for f in ("source.png", "target.png"))
        report["judge"] = judge_run(judge, src, tgt, vertices)
    dev = resolve_device(device)
    tap = tap_on(tap, dev)
    x = torch.from_numpy(vertices).permute(0, 3, 1, 2).float() / 255.0
    try:
        check = sample_polytope(tap, x, target, samples=samples, seed=seed, batch_size=batch_size, device=dev,
                                progress=progress, judge=judge,
                                source_class=report["judge"]["source"]["class"] if judge is not None else None)
    except ValueError as e:
        raise CollideError(str(e)) from None
    check["target_class_name"] = class_name(tap, check["target_class"])
    check["vertex_mean_pairwise_l2"] = pairwise_l2(vertices)
    check["dataset_mean_pairwise_l2"] = pairwise_l2(dataset_images) if dataset_images is not None else None
    check["dataset_n_images"] = 0 if dataset_images is None else len(dataset_images)
    check["units"] = f"L2 over 0..255 pixel values of {vertices.shape[1]} x {vertices.shape[2]} x 3 images"
    report["polytope"] = check
    write_report(os.path.join(run_dir, "report.json"), report)
    return report
