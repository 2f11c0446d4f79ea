"""The matterport family: matterport/Mask_RCNN's Keras Mask R-CNN (and pytorch-mask-rcnn's port), in NumPy.

`config.MatterportConfig` holds matterport's inference `Config` attributes by their own names;
`weights_convert.matterport_convert.read_matterport` turns a `.h5` / `.pth` / converted `.npz` file into
(MatterportConfig, {Keras weight name: array}); the network loads that. Keep this file free of imports: the weights
reader imports `matterport.config`, and through it this package.
"""
