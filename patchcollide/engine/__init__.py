"""The collision engine: a network tapped at a layer (``models``, ``nets``), the loss terms
(``objectives``), the search spaces (``params``), the optimisation loop (``collide``) with its
checkpoints, the polytope checks (``polytope``) and the judge (``judge``). Imports only ``core``;
never the offline stage (the patch index comes in as an object)."""
