"""Config keys of solo_d2 (``MODEL.SOLO.*``). Defaults are the original SOLO R50-FPN model."""

from detectron2.config import CfgNode as CN

__all__ = ["add_solo_config"]


def add_solo_config(cfg):
    """Add the ``MODEL.SOLO`` keys, and solo_d2's ``SOLVER``, ``INPUT`` and
    ``MODEL.BASIC_RESNET`` keys, to a Detectron2 config (in place)."""
    # Optimizer of solo_d2.engine.Trainer: "SGD" (Detectron2's, with SOLVER.MOMENTUM) or
    # "AdamW" (same parameter groups, weight decay and gradient clipping).
    cfg.SOLVER.OPTIMIZER = "SGD"
    # Mixed precision of SOLVER.AMP.ENABLED: "float16" (CUDA only: Detectron2's AMPTrainer, with
    # gradient scaling) or "bfloat16" (CPU or CUDA: autocast, no scaling; on a CPU without
    # bfloat16 instructions training stays in float32, with a warning). solo_d2.engine.amp.
    cfg.SOLVER.AMP.PRECISION = "float16"
    # Wall-clock budget of a training run in whole seconds, evaluations included (0: off, train
    # SOLVER.MAX_ITER iterations). When set, the iteration count is chosen from the measured
    # speed so that the run ends within it; SOLVER.STEPS and TEST.EVAL_PERIOD keep their
    # fractions of SOLVER.MAX_ITER (solo_d2.engine.time_budget).
    cfg.SOLVER.TIME_BUDGET_S = 0
    # Iterations timed before the time budget's first plan (it is corrected as training goes).
    cfg.SOLVER.TIME_BUDGET_MEASURE_ITERS = 20
    # Training images rotated counter-clockwise by one of these angles (degrees, multiples of
    # 90, drawn uniformly per image) after the resize and flip, masks and boxes with them
    # (solo_d2.data.augmentation); [] (or [0]): off, as in Detectron2.
    cfg.INPUT.RANDOM_ROTATION_ANGLES = []
    # The ResNet of MODEL.BACKBONE.NAME "build_basic_resnet_fpn_backbone" (basic blocks; the rest
    # from MODEL.RESNETS / MODEL.FPN; solo_d2.modeling.backbone): channels of the stem and res2,
    # doubled per stage, and blocks in res2..res5. 64 and [2, 2, 2, 2] are ResNet-18.
    cfg.MODEL.BASIC_RESNET = CN()
    cfg.MODEL.BASIC_RESNET.WIDTH = 64
    cfg.MODEL.BASIC_RESNET.BLOCKS_PER_STAGE = [2, 2, 2, 2]
    cfg.MODEL.SOLO = CN()
    _C = cfg.MODEL.SOLO
    # Head variant: "SOLO", "DecoupledSOLO", "DecoupledSOLOLight" or "SOLOv2"
    # (solo_d2.modeling.heads.SOLO_HEAD_REGISTRY).
    _C.HEAD = "SOLO"
    # Number of foreground classes (no background class).
    _C.NUM_CLASSES = 80
    # Backbone features the head reads, one per level (P2..P6 of the ResNet-FPN backbone).
    _C.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    # Grid size S per level: the category branch predicts S x S cells, the mask branch S^2 masks.
    _C.NUM_GRIDS = [40, 36, 24, 16, 12]
    # Per level (lower, upper) range of sqrt(gt box area) in input pixels, both ends inclusive.
    _C.SCALE_RANGES = [[1, 96], [48, 192], [96, 384], [192, 768], [384, 2048]]
    # Head stride per level, after the head resizes P2 by 0.5 and P6 to P5's size. Mask outputs
    # are at half of it; at inference a mask needs more pixels than this stride (at H/4) to count.
    _C.FPN_STRIDES = [8, 8, 16, 32, 32]
    # Scale of the gt box that bounds the centre region of positive cells.
    _C.SIGMA = 0.2
    # Number of 3x3 conv + norm + ReLU layers in each of the mask and category towers.
    _C.NUM_STACKED_CONVS = 7
    # Channels of the tower convs.
    _C.FEAT_CHANNELS = 256
    # Norm of the tower convs ("GN", "BN", "SyncBN", ... or "" for none).
    _C.NORM = "GN"
    # solo_d2: one norm layer per level behind each tower conv (the convs stay shared by the
    # levels). With BatchNorm each level keeps its own running statistics: a shared BN
    # normalises every level at test time with one average of statistics that differ several
    # times between levels (in training each call uses its own batch's). Needs NORM; False is
    # the original (shared GN, which keeps no statistics). SOLOv2_shapes_dense_quick sets it:
    # mask AP 64.4-64.7 -> 66.0-66.1 in 480 s, two runs (docs/BENCHMARKS.md, seventh round).
    _C.NORM_PER_LEVEL = False
    # Tower convs that are modulated deformable convs (DCNv2), in every tower of the head (mask,
    # category, SOLOv2 kernel): "none", "last" (the last conv of each tower: Decoupled SOLO Light
    # DCN, SOLOv2 Light 512 DCN) or "all" (SOLOv2 R101/X101 DCN).
    _C.DCN_TOWER_LAYERS = "none"
    # SOLOv2: channels E of the dynamic kernels and of the unified mask features they apply to.
    _C.KERNEL_CHANNELS = 256
    # SOLOv2: channels inside the mask-feature branch.
    _C.MASK_FEATURE_CHANNELS = 128
    # SOLOv2: the mask-feature branch fuses the first N of MODEL.SOLO.IN_FEATURES (P2..P5).
    _C.NUM_MASK_FEATURE_LEVELS = 4
    # SOLOv2: stride of the unified mask features, and so of the masks: 4 (the original, H/4) or
    # 2 (solo_d2: upsampled x2 and refined by one 3x3 conv; finer masks of small objects, for
    # ~20 % more time per step; docs/BENCHMARKS.md).
    _C.MASK_FEATURE_STRIDE = 4
    # SOLOv2: stride of the masks (1, 2 or 4; 0: MASK_FEATURE_STRIDE, the original). A finer
    # stride upsamples the dynamic conv's logits bilinearly before the sigmoid, and the Dice loss
    # compares them with gt masks at that stride, so that a mask's outline is learned between the
    # feature pixels; inference binarises, rescores and compares the masks at that stride too.
    # No new weights; the dynamic convs and the Dice run at the finer size (stride 2: ~1.3x the
    # step on crowded small objects, and +10 mask AP there; docs/BENCHMARKS.md).
    _C.MASK_OUTPUT_STRIDE = 0
    # SOLOv2: make every conv of the mask-feature branch deformable, the 1x1 output conv included
    # (the SOLOv2 R101/X101 DCN models).
    _C.USE_DCN_IN_MASK_FEATURES = False
    # Initial foreground probability of the category output (its bias, rule N5).
    _C.PRIOR_PROB = 0.01
    # Initial probability of the mask outputs: the bias of SOLO's per-cell mask convs and of each
    # Decoupled SOLO x / y conv (SOLOv2's dynamic masks start near 0.5 and have no such bias).
    # 0.01 as the original; from scratch, 0.5 trains the masks much faster: at 0.01 the sigmoid
    # is saturated and the Dice gradient reaching the logits is ~25x smaller (docs/BENCHMARKS.md).
    _C.MASK_PRIOR_PROB = 0.01
    # gt masks with fewer pixels (on the padded input) produce no target.
    _C.MIN_MASK_PIXELS = 10
    # How a gt mask becomes the mask target at the masks' stride (rule T6). "binary": the
    # original, bilinear resize then >= 0.5, which rounds a pixel exactly half covered (2 of the
    # 4 input pixels it reads) up: every edge that falls inside a target pixel moves half a
    # target pixel outwards, and the masks a model learns are that much too large (6.8 % in
    # area for the 10-20 px objects of shapes_dense at stride 2). "half_ties": 0.5 at those
    # pixels, 0 or 1 elsewhere. "area": the fraction of the target pixel's input pixels inside
    # the mask. The Dice fits soft targets as they are, and bilinear upsampling of the learned
    # masks then crosses the mask threshold (0.5) on the true edge (docs/BENCHMARKS.md).
    _C.MASK_TARGET = "binary"

    # Losses: Dice on the masks of positive cells, sigmoid focal loss on the category grid.
    _C.DICE_WEIGHT = 3.0
    _C.FOCAL_WEIGHT = 1.0
    _C.FOCAL_ALPHA = 0.25
    _C.FOCAL_GAMMA = 2.0

    # Inference.
    # Minimum category probability of a (cell, class) candidate.
    _C.SCORE_THRESH_TEST = 0.1
    # Threshold on mask probabilities for binary masks.
    _C.MASK_THRESH_TEST = 0.5
    # Candidates kept (by maskness-rescored score) before Matrix NMS.
    _C.NMS_PRE_TEST = 500
    # Minimum score after Matrix NMS.
    _C.UPDATE_THRESH_TEST = 0.05
    # Matrix NMS decay: "gaussian" or "linear", and the gaussian sigma.
    _C.NMS_KERNEL = "gaussian"
    _C.NMS_SIGMA = 2.0
    # Maximum detections per image.
    _C.MAX_PER_IMG = 100
    # A candidate's binary mask (at H/4) must have more pixels than this times its level's
    # stride (FPN_STRIDES) to be kept: 1.0 is the original rule, which drops every object under
    # ~11 x 11 px at stride 8; 0 keeps every non-empty mask (the shapes quick configs: small
    # objects, docs/BENCHMARKS.md).
    _C.MASK_AREA_FACTOR_TEST = 1.0
    # solo_d2: keep only the connected part of each output mask (8-connected, at the mask
    # stride) that holds its highest probability, dropping stray parts a kernel draws on other
    # objects, which stretch the mask's box. False is the original; SOLOv2's shapes quick
    # configs set it. Not exportable (an iterative flood fill): export with it False.
    _C.KEEP_PEAK_COMPONENT_TEST = False

    # Checkpoints. Allow full unpickling (torch.load(weights_only=False)) of MODEL.WEIGHTS files
    # that hold Python objects besides tensors. Unpickling runs code from the file: enable it
    # only for files you trust (solo_d2.checkpoint.weights_file).
    _C.TRUST_WEIGHTS_PICKLE = False
    return cfg
