"""The collision engine: the loss terms (``objectives``, ``terms``), the search spaces
(``params``), the optimisation loop (``collide``) with its checkpoints and the polytope checks
(``polytope``), on a network tapped at a layer (``patchcollide.models``). Imports only ``core``
and ``models``; never the offline stage (the patch index comes in as an object)."""
