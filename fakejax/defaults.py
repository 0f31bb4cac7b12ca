"""The base config every file in configs/ starts from; each key is documented here.

Config files override a few fields:  `from fakejax import defaults` then
`config = defaults.get_config()`.
"""

import importlib.util
import os

import ml_collections

from fakejax import photo
from fakejax import synthetic


def get_config():
  """All keys with their defaults (Xception on the synthetic benchmark, binary)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  _model(c)
  _data(c)
  _aug(c)
  _optim(c)

  c.deepfd = ml_collections.ConfigDict()  # model.name = 'deepfd' only.
  c.deepfd.stage1_steps = 1000        # Contrastive training of D1 (replaces num_epochs/total_steps).
  c.deepfd.stage2_steps = 1000        # Cross-entropy training of D2.
  c.deepfd.margin = 2.0               # Contrastive margin m.
  c.deepfd.freeze_d1 = True           # Stage 2 leaves D1 (parameters and BN statistics) untouched.

  c.eval_every_steps = 0              # 0: once per epoch.
  c.log_every_steps = 20
  c.best_metric = "accuracy"          # Validation metric that picks the best checkpoint (loss and eer:
                                      #   lowest; accuracy, ap, auc, top1, real_acc, fake_acc: highest).
  c.early_stop_patience = 0           # Stop after this many evals without improvement (0: never).
  c.probe = ml_collections.ConfigDict()  # model.cached_features only (training.probe, UnivFD's rule):
  c.probe.lr_drop_patience = 0        #   epochs without a gain before the lr drops 10x (0: never).
  c.probe.solver = "epochs"           #   'epochs': the optimizer over num_epochs (UnivFD); 'logistic':
                                      #   scikit-learn's LogisticRegression (lbfgs, L2) on features
                                      #   standardised over the training records, fitted to convergence.
  c.probe.C = 1.0                     #   'logistic': the inverse L2 strength (scikit-learn's C).
  c.probe.max_records = 0             #   > 0: fit on a seeded draw (data.seed) of at most this many
                                      #   training records (0: all).
  c.keep_checkpoints = 2
  c.checkpoint_every_steps = 0        # Also checkpoint between evaluations (0: only at evaluations),
  c.checkpoint_every_minutes = 0.0    #   or about this many minutes (a step interval set by process 0
                                      #   after 10 timed steps, kept on resume): a kill loses little work.
  c.eval_batch_size = 0               # 0: same as batch_size.
  c.eval_threads = 0                  # Image-decoding threads of evaluation per process (0: one per core).
  c.threshold = 0.5                   # p_fake decision threshold.
  c.profile_steps = ""                # 'A:B': a jax.profiler trace of steps A+1..B into WORKDIR/profile
                                      #   (TensorBoard's profile plugin or Perfetto opens it).
  return c


def _model(c):
  """The model keys of get_config."""
  c.model = ml_collections.ConfigDict()
  c.model.name = "xception"          # A key of fakejax.models.MODELS.
  c.model.dropout = 0.5               # Dropout before the classifier.
  c.model.width = 1.0                 # Channel multiplier (1.0: the published architecture).
  c.model.middle_blocks = 8           # Xception only.
  c.model.bn_momentum = 0.0           # 0: the architecture's own (Keras 0.99, torchvision 0.9).
  c.model.dtype = "auto"              # Compute dtype: 'auto' = bfloat16 on GPU/TPU (params, optimizer
                                      #   state, loss, BN statistics stay float32), float32 on CPU;
                                      #   or 'float32' / 'bfloat16'. A run records the dtype it used.
  c.model.init = "reference"         # Initial parameters from scratch: 'reference' (as the architecture's
                                      #   framework: Keras glorot uniform, torchvision kaiming normal,
                                      #   BiT a zero head) or 'flax' (nnx defaults). Not DeepFD.
  c.model.remat = False               # Recompute each block's activations in the backward pass
                                      #   (nnx.remat): less memory, about one more forward pass.
  c.model.preprocess = "auto"         # 'minus_one_one' (Keras), 'imagenet' (torchvision), 'unit', 'clip'
                                      #   (OpenAI CLIP's mean and std);
                                      #   'auto': that of init_from's weights, else the architecture's.
  c.model.front = "none"              # Input front-end after the normalisation (models.fronts):
                                      #   'npr' (NPR's residual), 'safe_dwt' (SAFE's bior1.3 HH band).
  c.model.single_logit = False        # Binary head of one logit z (BCE; NPR), scored as [0, z].
  c.model.init_from = ""              # Start from: a folder written by `fakejax.convert`,
                                      #   'keras:FILE.h5', 'torchvision:FILE', or a run's workdir.
  c.model.transfer = "finetune"       # 'finetune' (all trains), 'linear_probe' (only the head trains;
                                      #   backbone and BatchNorm statistics frozen), 'freeze_bn'
                                      #   (all trains, BatchNorm uses and keeps its running statistics),
                                      #   'lora' (the LoRA adapters and the head train, the backbone is
                                      #   frozen: models.lora.TRAINABLE; needs lora_rank > 0).
  c.model.cached_features = False     # linear_probe: train the head on the frozen backbone's features,
                                      #   computed once per dataset and cached (training.probe; CLIP ViTs).
  c.model.backbone_lr = 1.0           # Learning-rate multiplier of everything but the head (and LoRA
                                      #   adapters, which train at the head's rate).
  c.model.lora_rank = 0               # DINOv2 only: LoRA of this rank on each block's lora_targets (0: none).
  c.model.lora_alpha = 1.0            #   The adapters' scale: lora_alpha / lora_rank (DDA: rank 8, alpha 1).
  c.model.lora_targets = ("qkv", "proj", "fc1", "fc2")  # The adapted layers (DDA's: attn.qkv, attn.proj,
                                      #   mlp.fc1, mlp.fc2; models.dinov2.LORA_TARGETS).
  c.model.spectrum_size = 64          # spectral only: the side of the centre crop whose residual's
                                      #   log-spectrum is the feature (models.spectral).
  c.model.pos_interp = "timm"         # DINOv2 only: how the positional embedding is resampled to the input's
                                      #   grid: 'timm' (timm's, the models with registers) or 'hub' (the
                                      #   facebookresearch hub's models without registers: DDA's).
  c.model.pos_embed_size = 0          # DINOv2 only: the input size its positional embedding is stored for
                                      #   (0: the architecture's, 518; B-Free's checkpoint: 504).


def _data(c):
  """The data keys of get_config."""
  c.data = ml_collections.ConfigDict()
  c.data.dir = ""                     # A dataset made by `fakejax.prepare`; '' = synthetic;
                                      #   'photo' = the embedded photo benchmark (data.photo).
  c.data.cache_dir = "data"           # Where the synthetic benchmark is generated and cached.
  c.data.task = "binary"              # 'binary' (real=0, fake=1) or 'attribution' (one class each).
  c.data.train_sources = ("tconv",)   # Generators to train on, with the reals they pair with; () = all.
  c.data.train_categories = ()        # Content categories to train on; () = all.
  c.data.exclude_categories = ()      # Held-out content categories (cross-content tests).
  c.data.train_per_category = 0       # > 0: train on a seeded subset (data.seed) of at most this many
                                      #   images per (category, source): fixes the training-set size
                                      #   while the number of categories varies (0: all).
  c.data.image_size = 64              # Crop size fed to the model.
  c.data.eval_resize = 0              # Resize before the eval centre crop (0: never resample).
  c.data.too_small = "error"          # Images smaller than the crop: 'error' or 'pad'.
  c.data.patches_per_image = 0        # Patch mode: K random patches per image (0: off).
  c.data.patch_size = 32              # Patch side in patch mode.
  c.data.balance = False              # Oversample classes to equal counts.
  c.data.pairs = False                # Aligned data: batches of (real, its reconstruction) pairs, both
                                      #   augmented alike (input_pipeline.pairs_of, PairTransform).
  c.data.val_fraction = 0.0           # Datasets without a 'val' split: validate on this seeded
                                      #   fraction of train (held out of training); 0: error.
  c.data.workers = -1                 # grain worker processes (0: in the main process; -1: on an
                                      #   accelerator the process's cores less one, on a CPU 0:
                                      #   input_pipeline.worker_count).
  c.data.read_threads = 0             # Threads per reader (0: the cores shared among the workers, <= 16).
  c.data.prefetch = 4                 # Batches each reader reads ahead (grain's own default: 500).
  c.data.seed = 0                     # Shuffle/augmentation seed.
  c.data.synthetic = ml_collections.ConfigDict()
  c.data.synthetic.size = 64
  c.data.synthetic.train = 200        # Real images per category; each gets one fake per family.
  c.data.synthetic.val = 50
  c.data.synthetic.test = 50
  c.data.synthetic.seed = 0
  c.data.synthetic.categories = synthetic.DEFAULT_CATEGORIES  # synthetic.CATEGORIES has 9.
  c.data.synthetic.families = synthetic.FAMILIES
  c.data.synthetic.storage = "png"    # 'png' or 'raw' (uint8 pixels: ~10x faster to read).

  c.data.photo = ml_collections.ConfigDict()  # data.dir='photo' (fakejax.photo): real photographs'
  c.data.photo.size = 64                      #   crops and five generators trained here.
  c.data.photo.train = 2000           # Reals of train (and as many fakes of families[0]).
  c.data.photo.val = 400
  c.data.photo.test = 400             # Reals and fakes per family in test.
  c.data.photo.seed = 0
  c.data.photo.families = photo.FAMILIES     # The first is the training family.
  c.data.photo.postprocess = ""       # e.g. 'jpeg:65-100,resize:1-1.25': the same for both classes.
  c.data.photo.gen_steps = photo.GEN_STEPS   # Training steps of each generator.
  c.data.photo.storage = "png"
  c.data.photo.train_all = False      # train/val hold every family (each with its own reals), so that
                                      #   data.train_sources can pick any (the cross-GAN matrix).
  c.data.photo.aligned = False        # families[0] 'kl_vae': train/val pairs of each real and its
                                      #   reconstruction (aligned data); test the five families.


def _aug(c):
  """The aug keys of get_config."""
  c.aug = ml_collections.ConfigDict()
  c.aug.crop = "random"               # 'random' or 'center'.
  c.aug.flip = 0.5                    # Horizontal flip probability.
  c.aug.resize = 0                    # Opt-in resize (resampling erases fingerprints).
  c.aug.rotate = 0.0                  # Max rotation, degrees (opt-in, resamples).
  c.aug.shift = 0.0                   # Max shift, fraction of the side (opt-in).
  c.aug.zoom = 0.0                    # Max zoom, fraction (opt-in).
  c.aug.blur_prob = 0.0               # Wang et al. 2020: Gaussian blur probability,
  c.aug.blur_sig = (0.0, 3.0)         #   sigma range,
  c.aug.jpg_prob = 0.0                #   JPEG re-compression probability,
  c.aug.jpg_qual = (30, 100)          #   quality range,
  c.aug.jpg_method = "pil"            #   encoder: 'pil' or 'cv2'.
  c.aug.spin = 0.0                    # SAFE, after crop and flip: rotation from U(-spin, spin) degrees,
                                      #   nearest, black corners (torchvision RandomRotation),
  c.aug.color_jitter = (0.0, 0.0, 0.0)  # brightness, contrast, saturation (torchvision ColorJitter),
  c.aug.mask_prob = 0.0               #   RandomMask: probability,
  c.aug.mask_ratio = (0.0, 0.75)      #   share of the image masked, drawn from this range,
  c.aug.mask_patch = 16               #   in patch x patch grid cells set to 0.
  c.aug.noise_prob = 0.0              # AlignedForensics: Gaussian noise of variance drawn from
  c.aug.noise_var = (10.0, 50.0)      #   this range (8-bit levels squared; albumentations' GaussNoise),
  c.aug.rot90 = 0.0                   #   a quarter turn 0-3 times with this probability,
  c.aug.grayscale = 0.0               #   grayscale with this probability (torchvision RandomGrayscale).
  c.aug.pixel_mix_prob = 0.0          # DDA, data.pairs only: the fake blended with its real in pixels
  c.aug.pixel_mix_ratio = 0.8         #   (the fake's weight from U(0, ratio)) with this probability,
  c.aug.freq_mix_prob = 0.0           #   or in the whole image's DCT (the real's weight from U(0, ratio)),
  c.aug.freq_mix_ratio = 0.8          #   before the pair's shared augmentation (augment.mix_pair).

  c.label_smoothing = 0.0             # Cross-entropy against (1 - a) one-hot + a / classes (SAFE: 0.1).
  c.batch_size = 64                   # Global batch (images); must divide by the device count.
  c.num_epochs = 50
  c.total_steps = 0                   # > 0 overrides num_epochs.


def _optim(c):
  """The optim keys of get_config."""
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"               # 'adam', 'adamw' or 'sgd'.
  c.optim.lr = 1e-3
  c.optim.end_lr = 1e-5               # Final lr of the cosine/exponential/step schedules.
  c.optim.schedule = "constant"       # 'constant', 'cosine', 'exponential' or 'step'.
  c.optim.decay_every = 0             # 'step' schedule: steps per decay (0: 10 decays in all).
  c.optim.warmup_steps = 0
  c.optim.warmup_epochs = 0.0         # > 0: warm-up in epochs (overrides warmup_steps).
  c.optim.decay_every_epochs = 0.0    # > 0: 'step' decay interval in epochs (overrides decay_every).
  c.optim.decay_begin_epochs = 0.0    # 'step'/'exponential': decays start after this many epochs.
  c.optim.decay_rate = 0.0            # 'step'/'exponential': factor per decay (0: reach end_lr at the end).
  c.optim.momentum = 0.9              # SGD.
  c.optim.weight_decay = 0.0          # AdamW (on kernels, ndim >= 2; biases and BatchNorm undecayed).
  c.optim.accumulate_steps = 1        # > 1: each step's batch runs as this many micro-batches whose
                                      #   gradients are averaged (less memory, same batch).


def from_file(path, arg=None):
  """Runs `get_config(arg)` of a config file (lets one config file build on another)."""
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()
