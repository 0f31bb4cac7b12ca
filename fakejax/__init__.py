"""fakejax: train and evaluate detectors of GAN-generated images with JAX and Flax NNX.

Importing the package changes nothing in the process: the XLA flags and device-memory defaults
that the command-line entry points want are set when one starts (fakejax.cli.run).
"""
