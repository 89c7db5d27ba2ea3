"""The networks: built by name with a tap on one layer (``build``), their weights, resolved,
loaded and cached (``weights``), the nets built here (``digits``: the digits world's and the
paper's MNIST nets; ``vgg``: torchvision's VGG without torchvision), the judge (``judge``) and
the names checked without torch (``names``). Imports only ``core``."""
