"""``ExportableSOLO``: a SOLO model as one image -> (masks, scores, classes, boxes) module.

The wrapper calls the model's own code (``preprocess_image``, backbone, head,
``inference_single`` with its ``SOLOPostProcessor``), so the exported graph is the eager
inference recipe traced once: normalisation, padding to the size divisibility, the head,
points-NMS, candidate selection, maskness, Matrix NMS, top-k and mask pasting are all inside
it. While tracing, the data-dependent steps take their graph forms
(:func:`solo_d2.modeling.layers.is_exporting`).
"""

from typing import Tuple

import torch
from torch import nn

__all__ = ["ExportableSOLO", "INPUT_DIMS", "INPUT_NAMES", "OUTPUT_DIMS", "OUTPUT_NAMES"]

INPUT_NAMES = ("image",)
OUTPUT_NAMES = ("masks", "scores", "classes", "boxes")
#: Dims of the graph's input and outputs; the names are the dynamic ones.
INPUT_DIMS = {"image": [3, "height", "width"]}
OUTPUT_DIMS = {
    "masks": ["num_detections", "height", "width"],
    "scores": ["num_detections"],
    "classes": ["num_detections"],
    "boxes": ["num_detections", 4],
}


class ExportableSOLO(nn.Module):
    """One image in, the detections at its size out.

    ``forward(image)``: ``image`` Float[3, H, W], 0..255 in the channel order of the config's
    ``INPUT.FORMAT``, already resized as the model expects (Detectron2's ``ResizeShortestEdge``
    with ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``). Returns, for N detections (N may be 0),
    ``masks`` Bool[N, H, W], ``scores`` Float[N] (descending), ``classes`` Long[N] and
    ``boxes`` Float[N, 4] (XYXY tight boxes of the masks), the fields of the ``Instances`` that
    the model returns for ``{"image": image}`` in eager mode.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if model.training:
            raise ValueError("ExportableSOLO needs a model in eval mode: call model.eval() first")
        self.model = model
        # Exporters restore the wrapper's mode afterwards, recursively: keep it (and so the
        # model) in eval mode.
        self.eval()

    def forward(
        self, image: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        model = self.model
        images = model.preprocess_image([{"image": image}])
        features = model.backbone(images.tensor)
        outputs = model.head([features[f] for f in model.in_features])
        image_size = images.image_sizes[0]
        instances = model.inference_single(
            outputs, 0, images.tensor.shape[-2:], image_size, image_size
        )
        return (
            instances.pred_masks,
            instances.scores,
            instances.pred_classes,
            instances.pred_boxes.tensor,
        )
