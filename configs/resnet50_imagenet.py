r"""ResNet-50 from torchvision's ImageNet weights for real vs. fake: linear probe, then fine-tune.

  # Once: the weights file you have -> a weights folder (nothing is downloaded).
  python -m fakejax.convert --from torchvision --model resnet50 resnet50-0676ba61.pth weights/resnet50
  # Step 1: only the head trains; backbone and BatchNorm statistics stay as ImageNet left them.
  python -m fakejax.train --config configs/resnet50_imagenet.py:probe --workdir runs/resnet50_probe
  # Step 2: everything trains from step 1's best model, the backbone at a tenth of the rate.
  python -m fakejax.train --config configs/resnet50_imagenet.py:finetune --workdir runs/resnet50_ft

Add --config.data.dir=PREPARED_DATASET for your data. Preprocessing follows the
weights (ImageNet mean/std). If fine-tuning sticks at 50% accuracy, try
--config.model.transfer=freeze_bn (BatchNorm keeps its ImageNet statistics).
"""

from fakejax import defaults


def get_config(step="probe"):
  c = defaults.get_config()
  c.model.name = "resnet50"
  c.model.dropout = 0.0
  c.data.image_size = 224
  c.data.synthetic.size = 256
  c.batch_size = 64
  c.optim.name = "adam"
  if step == "probe":
    c.model.init_from = "weights/resnet50"
    c.model.transfer = "linear_probe"
    c.num_epochs = 5
    c.optim.lr = 1e-3
  elif step == "finetune":
    c.model.init_from = "runs/resnet50_probe"  # Step 1's workdir: its best model, head included.
    c.model.transfer = "finetune"
    c.model.backbone_lr = 0.1
    c.num_epochs = 20
    c.optim.lr = 1e-4
    c.optim.schedule = "cosine"
    c.optim.end_lr = 1e-6
  else:
    raise ValueError(f"Unknown step {step!r}; known: probe, finetune")
  return c
