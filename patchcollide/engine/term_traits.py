"""The added loss terms' registry, without torch: what ``CollideConfig`` checks and the CLI shows
before anything loads (``--terms``, ``--term-option``).

Every run's loss has the built-in terms (``terms.BUILT_INS``: the collision, the push, the
least-change term, the polytope, distinct, TV and entropy), each set by its own options
(``--loss-early``, ``--least-change``, ``--tv``, ...). ``TERMS`` holds the terms a run may add
after them by name (``--terms``, a job's ``"terms"``): every package's ``patchcollide.terms``
entry points, loaded when a config names them (``core/plugins.py``), and those registered in
code (``TERMS["brightness"] = Brightness``: this process only). A term is a subclass of
``Term`` below, the base of the built-in terms too (docs/extending.md has the contract).
"""
from __future__ import annotations

from ..core.plugins import Registry

# The loop's history columns, in report.json's order: the built-in terms' and the loop's own metrics
# (the relative errors and the push, measured on every step); an added term's columns follow.
COLUMNS = ("pos", "neg", "tv", "entropy", "worst_rel_error", "mean_rel_error", "min_push", "least_change",
           "least_change_weight", "fooled", "polytope", "distinct")


class Term:
    """One term of the vertex loss (``terms.py`` has the built-ins). ``value(ctx)`` a (V,) tensor,
    differentiable; ``weight(ctx)`` a float or (V,); ``record`` appends what the step measured
    under the term's history columns; ``ctx`` is the step's ``terms.Context``, ``setup`` of
    ``from_config`` the run's ``terms.Setup``.

    Class members: ``key`` (its history column), ``columns`` (every column it writes),
    ``decision`` (it reads ``ctx.logits`` / ``ctx.z_all`` of the vertices and the step's
    polytope samples), ``holds`` (the run does not stop on
    ``tol`` while the term is in the loss: it holds the vertices somewhere else). An added term
    (``term_traits.TERMS``) also has ``summary`` (its line in ``--terms``' help), ``options``
    (its own settings and their defaults, ``{name: float}``: ``--term-option TERM.NAME:VALUE``,
    a job's ``"term_options"``), ``check_options(settings)`` (ValueError(problem) for values
    it cannot take) and ``settings`` (every option, the run's values in place of the defaults,
    set by the default ``from_config``)."""

    key: str = ""
    decision = False
    holds = False
    summary = ""
    options: dict[str, float] = {}
    settings: dict[str, float] = {}

    @classmethod
    def check_options(cls, settings: dict[str, float]) -> None:
        """Nothing beyond the names by default."""

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.key,)

    @classmethod
    def from_config(cls, setup) -> "Term":
        """The term for this run (``Off(cls)`` where it is off); by default ``cls()`` with
        ``settings`` from ``setup.options``."""
        term = cls()
        term.settings = dict(setup.options)
        return term

    def value(self, ctx):
        raise NotImplementedError

    def weight(self, ctx):
        raise NotImplementedError

    def record(self, ctx, value, history: dict) -> None:
        """After the step: the mean of the step's value over the vertices."""
        history.setdefault(self.key, []).append(float(value.detach().mean()))

    def converged(self, history: dict) -> bool:
        """Whether the run has done what the term is for at its end (beside ``tol``)."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r})"


def check_term(obj) -> str | None:
    """What keeps ``obj`` from being a loss term (``TERMS``' check of a plug-in), or None."""
    if not (isinstance(obj, type) and issubclass(obj, Term)):
        return "it is no subclass of patchcollide.engine.term_traits.Term"
    if not isinstance(obj.key, str) or not obj.key:
        return "it has no key (the name of its history column)"
    if obj.key in COLUMNS:
        return f"its key {obj.key!r} is a column of the built-in loss; give it a name of its own"
    if not isinstance(obj.options, dict) or not all(isinstance(k, str) and isinstance(v, (int, float))
                                                    for k, v in obj.options.items()):
        return f"its options {obj.options!r} are not {{name: number}}"
    return None


# --terms: name -> Term class, added after the built-in terms
TERMS = Registry("patchcollide.terms", "loss term", "--terms", {}, check_term)
