"""The arithmetic of the network's layers, shared by every model family.

Modules, in reading order:
    layers.py        linear, 2x2 transposed convolution, max pooling, nearest upsampling, ReLU / sigmoid / softmax;
                     re-exports the convolution API so that stages import all their layers from one place
    convolution.py   `Conv`, BatchNorm folding, convolution as blocked im2col + one BLAS product (the plain formula)
    winograd.py      3x3 stride-1 convolutions by Winograd's F(4x4, 3x3) (Lavin & Gray 2016): 36 GEMMs
    workspace.py     reused per-thread scratch buffers (im2col columns, Winograd tiles); `reuse_freed_memory`, the
                     malloc setting that lets the layers' outputs reuse freed pages (an application's choice)
    threads.py       how many threads Numba and every loaded BLAS use (`minimaskrcnn.set_num_threads`)
"""
