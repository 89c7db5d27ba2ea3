"""Exact feature collisions from the kernel of a network's first trainable layer (Ozbulak et al.
2022, "Exact Feature Collisions", the Null-space search), and their Table 1 (nullities of every
weight matrix of a model). One module per job, each importing only those above it:

    table.py    the paper's Table 1, ranks and nullities of weight matrices, the nullity table;
                NullspaceError and the provenance (versions, machine) the others share
    kernel.py   kernel vectors of the first layer and the perturbations P built from them
    spectra.py  overlapping convolutions as maps on the whole image: dense, circular and
                LOBPCG spectra, the verdict, the paper's naive tiling
    verify.py   how exact a collider is (float32 and float64), the size of P, the PGD start
    runs.py     the search (``nullspace_search``), a whole run by model name
                (``run_nullspace``) and its run directory

    from patchcollide.exact import NullspaceConfig, run_nullspace, nullity_table, table_markdown

    report = run_nullspace("vit_b_32", "runs/ns-vit", config=NullspaceConfig(beta=75))
    table = nullity_table(["alexnet", "vgg16"])         # random weights: structure only
    print(table_markdown(table))

Models are built by :func:`patchcollide.models.build.build_model`. The function that compares a
collider with its start is ``patchcollide.exact.verify.verify`` (not re-exported here: the name
is the module's).

Importing the package loads only ``config`` (no torch): the command line is checked before the
rest is imported, on first use of one of its names.
"""

from .config import MAX_DENSE_SIZE, MODES, NullspaceConfig, NullspaceError  # torch-free: the CLI's checks

# the rest, imported on first use (torch): name -> its module
_LAZY = {
    **dict.fromkeys((
        'kernel_vectors', 'linear_perturbation', 'patch_perturbation'
    ), 'kernel'),
    **dict.fromkeys((
        'PIXEL_SCALE', 'FirstLayer', 'NullspaceResult', 'check_out', 'find_first_layer',
        'imagenet_bounds', 'imagenet_input', 'imagenet_pixels', 'nullspace_search', 'result_json',
        'run_nullspace', 'write_nullspace_run'
    ), 'runs'),
    **dict.fromkeys((
        'circular_spectrum', 'conv_map_analysis', 'dense_spectrum', 'lobpcg_spectrum', 'map_rtol',
        'naive_tiling'
    ), 'spectra'),
    **dict.fromkeys((
        'CLASSIFICATION_MODELS', 'EPS32', 'EPS64', 'PAPER_MODELS', 'PAPER_TABLE1',
        'EXACT_RANDOM_NOTICE', 'PaperRow', 'Rank', 'compare_with_paper', 'default_rtol', 'machine',
        'matrix_rank', 'nullity_row', 'nullity_table', 'paper_row', 'pct_matches',
        'singular_values', 'structure_row', 'table_markdown', 'tolerance_rule', 'versions',
        'weight_matrices'
    ), 'table'),
    **dict.fromkeys((
        'layer_residual', 'model_output', 'perturbation_size', 'pgd'
    ), 'verify'),
}

__all__ = [
    # table
    "CLASSIFICATION_MODELS", "EPS32", "EPS64", "PAPER_MODELS", "PAPER_TABLE1", "EXACT_RANDOM_NOTICE", "NullspaceError",
    "PaperRow", "Rank", "compare_with_paper", "default_rtol", "machine", "matrix_rank", "nullity_row",
    "nullity_table", "paper_row", "pct_matches", "singular_values", "structure_row", "table_markdown",
    "tolerance_rule", "versions", "weight_matrices",
    # kernel
    "MAX_DENSE_SIZE", "MODES", "NullspaceConfig", "kernel_vectors", "linear_perturbation", "patch_perturbation",
    # spectra
    "circular_spectrum", "conv_map_analysis", "dense_spectrum", "lobpcg_spectrum", "map_rtol", "naive_tiling",
    # verify
    "layer_residual", "model_output", "perturbation_size", "pgd",
    # runs
    "PIXEL_SCALE", "FirstLayer", "NullspaceResult", "check_out", "find_first_layer", "imagenet_bounds",
    "imagenet_input", "imagenet_pixels", "nullspace_search", "result_json", "run_nullspace", "write_nullspace_run",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # once: a test may replace it (monkeypatch) as any module attribute
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
