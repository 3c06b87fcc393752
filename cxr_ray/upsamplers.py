"""The names of the 2x upsamplers synthetic fakes are made with (cxr_ray.train.loop.resampled_fakes); no heavy imports,
so designs (cxr_ray.generalise) and configs can name them at CLI start-up."""

RESAMPLE_MODES = ("nearest", "bilinear", "bicubic")  # the interpolations generators upsample with
# Upsamplers whose kernel a generator learns: a stride-2 transposed convolution (4x4) and a sub-pixel
# convolution (3x3 conv to 4 channels, then pixel shuffle).
LEARNT_MODES = ("transposed", "pixel_shuffle")
ALL_UPSAMPLERS = RESAMPLE_MODES + LEARNT_MODES
