"""fakejax: train and evaluate detectors of GAN-generated images with JAX and Flax NNX."""

import os

# XLA:CPU (jaxlib 0.10) hands convolutions to YNNPACK by default; its own convolution kernels
# are faster for these models on x86 (ResNet-50 train +10%, eval +13%, Xception eval +15%:
# docs/performance.md). Read when the CPU backend starts, so it is set on import; a
# user's own setting of this flag wins. No effect on GPU/TPU.
_CPU_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
if "xla_cpu_experimental_ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_CPU_CONV_FLAG}".strip()
