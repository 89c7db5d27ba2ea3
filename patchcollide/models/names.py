"""Model names, the --weights rule and state-dict files, without torch, so that ``--model``,
``--weights``, ``--judge-model`` and ``--judge FILE`` are shown and checked at the entrance of a
command, before torch loads.

The torchvision names are those of the torchvision this package is tested with
(tests/test_startup.py compares them with ``torchvision.models.list_models()``), the digits
world's nets those of ``digits.BUILDERS``, the shape stand-ins those of ``build.builder``."""
from __future__ import annotations

import difflib
import os

from ..core.errors import PatchcollideError

TORCHVISION_CLASSIFIERS = (  # torchvision.models.list_models(module=torchvision.models)
    "alexnet", "convnext_base", "convnext_large", "convnext_small", "convnext_tiny", "densenet121",
    "densenet161", "densenet169", "densenet201", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2",
    "efficientnet_b3", "efficientnet_b4", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7",
    "efficientnet_v2_l", "efficientnet_v2_m", "efficientnet_v2_s", "googlenet", "inception_v3", "maxvit_t",
    "mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3", "mobilenet_v2", "mobilenet_v3_large",
    "mobilenet_v3_small", "regnet_x_16gf", "regnet_x_1_6gf", "regnet_x_32gf", "regnet_x_3_2gf",
    "regnet_x_400mf", "regnet_x_800mf", "regnet_x_8gf", "regnet_y_128gf", "regnet_y_16gf", "regnet_y_1_6gf",
    "regnet_y_32gf", "regnet_y_3_2gf", "regnet_y_400mf", "regnet_y_800mf", "regnet_y_8gf", "resnet101",
    "resnet152", "resnet18", "resnet34", "resnet50", "resnext101_32x8d", "resnext101_64x4d",
    "resnext50_32x4d", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0", "squeezenet1_0", "squeezenet1_1", "swin_b", "swin_s", "swin_t", "swin_v2_b",
    "swin_v2_s", "swin_v2_t", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19",
    "vgg19_bn", "vit_b_16", "vit_b_32", "vit_h_14", "vit_l_16", "vit_l_32", "wide_resnet101_2",
    "wide_resnet50_2",
)

TORCHVISION_OTHERS = (  # segmentation, detection, video, optical flow, quantized
    "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet101", "deeplabv3_resnet50",
    "fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2", "fcn_resnet101", "fcn_resnet50", "fcos_resnet50_fpn",
    "keypointrcnn_resnet50_fpn", "lraspp_mobilenet_v3_large", "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2", "mc3_18", "mvit_v1_b", "mvit_v2_s", "quantized_googlenet",
    "quantized_inception_v3", "quantized_mobilenet_v2", "quantized_mobilenet_v3_large",
    "quantized_resnet18", "quantized_resnet50", "quantized_resnext101_32x8d", "quantized_resnext101_64x4d",
    "quantized_shufflenet_v2_x0_5", "quantized_shufflenet_v2_x1_0", "quantized_shufflenet_v2_x1_5",
    "quantized_shufflenet_v2_x2_0", "r2plus1d_18", "r3d_18", "raft_large", "raft_small",
    "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2", "s3d", "ssd300_vgg16",
    "ssdlite320_mobilenet_v3_large", "swin3d_b", "swin3d_s", "swin3d_t",
)

WEIGHTS_RULE = ("auto (the default of every command): torchvision's ImageNet weights when the torch cache holds "
                "them (sha256 checked) or they download, else seeded random weights, said in a warning and in every "
                "output; imagenet: those weights or an error; random: seeded random weights (smoke runs); PATH: a "
                "state dict (recorded as user weights)")  # --weights of every command (weights.resolve_weights)
WEIGHTS = ("auto", "imagenet", "random")  # besides a PATH
DEFAULT_WEIGHTS = "auto"  # --weights of every command
WEIGHTS_METAVAR = "auto|imagenet|random|PATH"


def weights_help(note: str = "") -> str:
    """The help of a --weights option: WEIGHTS_RULE, then the command's own ``note``."""
    return WEIGHTS_RULE[0].upper() + WEIGHTS_RULE[1:] + "." + (f" {note}" if note else "")


DEFAULT_JUDGE_MODEL = "digits_lenet5"  # --judge-model (judge.load_judge)
DEFAULT_MODEL, DEFAULT_LAYER = "vgg16", "fc6"  # --model and --layer of collide and batch

OWN_MODELS = ("digits_vgg", "digits_lenet5")  # digits.BUILDERS: the digits world's nets
SHAPE_ONLY = ("deit_tiny_shapes", "deit_base_shapes")  # build.builder: DeiT's shapes from torchvision's ViT
CLASSIFIERS = TORCHVISION_CLASSIFIERS + OWN_MODELS  # collide's, batch's and the judge's
ANY_MODEL = TORCHVISION_CLASSIFIERS + TORCHVISION_OTHERS + SHAPE_ONLY  # nullspace's and nullity's


class NameError_(PatchcollideError):
    """A model name or a state-dict file refused at the entrance; one line."""


def check_model_name(name: str, option: str = "--model", names: tuple[str, ...] = CLASSIFIERS) -> None:
    """NameError_ naming ``option`` when ``name`` is not among ``names``, with the closest names."""
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    kinds = ("a torchvision classifier (torchvision.models.list_models(module=torchvision.models)) or "
             f"{', '.join(OWN_MODELS)}" if names is CLASSIFIERS else
             f"a torchvision model name (torchvision.models.list_models()) or one of {', '.join(SHAPE_ONLY)}")
    raise NameError_(f"{option} {name!r}: unknown model; use {kinds}{hint}")


ZIP, PICKLE = b"PK\x03\x04", b"\x80"  # torch.save's zip archive; the legacy format's pickle protocol byte
MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
         (b"\x89HDF", "an HDF5 file (a patch store?)"), (b"%PDF", "a PDF"))


def file_kind(path: str) -> str | None:
    """What a file that is not a state dict is, from its first bytes, in words (None: unknown)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return None
    for magic, what in MAGIC:
        if head.startswith(magic):
            return what
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "a text file"
    return None


def check_state_file(path: str, option: str = "--weights") -> None:
    """The checks of a state-dict file that need no torch: it exists, is a file, is readable
    and begins as torch.save's files do (a zip archive, or a pickle). NameError_ naming
    ``option`` otherwise; what is inside is for ``weights.load_state_file`` to read."""
    if os.path.isdir(path):
        raise NameError_(f"{option} {path}: is a folder; give a state dict file")
    if not os.path.isfile(path):
        raise NameError_(f"{option} {path!r}: no such file; give a state dict file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as e:
        raise NameError_(f"{option} {path}: cannot be read ({e.strerror}); fix its permissions") from None
    if not (head.startswith(ZIP) or head.startswith(PICKLE)):
        kind = file_kind(path)
        what = f"it is {kind}" if kind else ("it is empty" if not head else "not a file written by torch.save")
        raise NameError_(f"{option} {path}: not a torch state dict ({what}); save one with "
                         "torch.save(model.state_dict(), PATH)")
