"""The matterport family: matterport/Mask_RCNN's Keras Mask R-CNN (and pytorch-mask-rcnn's port), in NumPy.

`config.MatterportConfig` holds matterport's inference `Config` attributes by their own names;
`weights_convert.matterport_convert.read_matterport` turns a `.h5` / `.pth` / converted `.npz` file into
(MatterportConfig, {Keras weight name: array}); the network loads that. Keep this file free of imports: the weights
reader imports `matterport.config`, and through it this package.

The network, in reading order (`model.py` calls the stages in this order; docs/matterport_facts.md collects what
differs from torchvision's family):
    model.py       the spine: load_matterport(cfg, weights) -> MatterportMaskRCNN.predict -> Detections (+ Trace)
    keras.py       Keras weight layouts -> minimaskrcnn.nn's, BatchNorm eps 1e-3 folding, TF "same" padding
    mold.py        utils.resize_image + mold_image: scikit-image 0.16's bilinear resize reproduced, centred padding
    backbone.py    matterport's ResNet-50/101 (stride on the first 1x1, conv biases)
    fpn.py         P2..P6
    anchors.py     generate_pyramid_anchors in normalized coordinates
    rpn.py         shared 3x3 conv, 2-way softmax objectness, deltas
    tf_nms.py      tf.image.non_max_suppression of TF 1.15, exactly (tie order, repeated zero-area selections)
    proposals.py   ProposalLayer: top-k over all levels, apply_box_deltas, clip, one NMS, zero padding
    roi_align.py   PyramidROIAlign: level rule with half-to-even rounding, tf.image.crop_and_resize sampling
    heads.py       box head and mask head with BatchNorm
    detection.py   DetectionLayer: argmax class, refinement, per-class NMS, top detections
    unmold.py      unmold_detections / unmold_mask: integer pixel boxes, masks resized into their boxes
"""
