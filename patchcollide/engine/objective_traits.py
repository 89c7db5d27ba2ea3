"""The objectives' registry and their traits, without torch: what ``CollideConfig`` checks and the
CLI shows before anything loads (``--objective``, ``--objective-option``, ``doubts()``).

An objective is one class, a subclass of ``Objective``, registered by name in ``OBJECTIVES`` (a
``core.plugins.Registry``: the built-ins, and every package's ``patchcollide.objectives`` entry
points). Until ``objectives`` is imported, ``OBJECTIVES`` holds the built-ins' trait classes
below; importing it (as everything that runs a search does) puts its classes, which compute the
terms, in their place. A plug-in's entry point names its class, loaded when its name is first
resolved (``core/plugins.py``).
"""
from __future__ import annotations

from ..core.plugins import Registry


class Objective:
    """The base of every objective: per step, from the vertices' pre-activations, the collision
    L+ and each vertex's push L-^v (``objectives.py`` has the built-ins' formulas).

    Class members (read before torch loads):

    * ``summary``: one line for ``--objective``'s help.
    * ``options``: its own parameters and their defaults, ``{name: float}``. A run sets them with
      ``--objective-option NAME:VALUE`` (repeatable) or a job's ``"objective_options": [[NAME,
      VALUE], ...]``; ``CollideConfig.objective_options`` holds the given ones, report.json
      records them, ``load_run`` reads them back.
    * ``pushes``: True where L-^v uses ``push_margin`` (``doubts()`` warns of a margin of 0 only
      for these).
    * ``check_options(settings)``: ValueError(problem) for values it cannot take (``settings``:
      every option, defaults filled in); CollideConfig has checked the names already.

    Instances: ``Objective(push_margin, **options)`` (``self.push_margin``; ``self.settings``:
    every option, defaults filled in), made from the config at every step and so holding no
    state between steps (a resumed run equals an unbroken one), called as
    ``objective(z, target) -> (L+ (V,), L-^v (V,))``: z (V, D) float32 pre-activations of the V
    vertices, differentiable; target a ``target.Target`` (``z`` (D,), ``units`` (V,) the
    inactive unit of each vertex, ``active``, ``post``). Both results differentiable and >= 0
    where the loop should stop pulling; the loop weighs them by phase (``--loss-early``,
    ``--loss-late``) and stops on the relative error, not on these.
    """

    summary = ""
    options: dict[str, float] = {}
    pushes = False

    @classmethod
    def check_options(cls, settings: dict[str, float]) -> None:
        """Nothing beyond the names by default."""

    def __init__(self, push_margin: float = 0.0, **options: float):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"{type(self).__name__} takes no option {unknown[0]!r}; its options: "
                             f"{', '.join(self.options) or 'none'}")
        self.push_margin = push_margin
        self.settings = {**self.options, **options}


class RelativeTraits(Objective):
    summary = "normalised L+ and a hinge push (--push-margin)"
    pushes = True


class PaperTraits(Objective):
    summary = "the authors' sums (L+ on active units)"


class PostTraits(Objective):
    summary = "the authors' sums with L+ on the whole post-activation"


def check_objective(obj) -> str | None:
    """What keeps ``obj`` from being an objective (``OBJECTIVES``' check of a plug-in), or None."""
    if not (isinstance(obj, type) and issubclass(obj, Objective)):
        return "it is no subclass of patchcollide.engine.objective_traits.Objective"
    if not any("__call__" in vars(k) for k in obj.__mro__[:-1]):
        return "it has no __call__(z, target)"
    if not all(isinstance(k, str) and isinstance(v, (int, float)) for k, v in obj.options.items()):
        return f"its options {obj.options!r} are not {{name: number}}"
    return None


# --objective: name -> Objective class
OBJECTIVES = Registry("patchcollide.objectives", "objective", "--objective",
                      {"relative": RelativeTraits, "paper": PaperTraits, "post": PostTraits}, check_objective)
