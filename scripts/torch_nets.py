"""PyTorch networks that no package ships, rebuilt from torchvision's blocks: the references of
the parity tests (tests/test_published.py) and the PyTorch peer's NPR (scripts/torch_peer.py).

NPR's and SAFE's truncated ResNet-50 follow their official forward (NPR-DeepfakeDetection
networks/resnet.py, SAFE models/resnet.py): front(x) into a 3x3/2 conv1, bn1, relu, maxpool,
layer1, layer2, avgpool, fc1. NPR's front is x - interpolate(x, 0.5) (nearest down, nearest up),
times 2/3, with one output; SAFE's is a DWT band, given by the caller.
"""


def npr_front(torch):
  """NPR's residual x - up(down(x)) * 2/3: their networks/resnet.py interpolate, verbatim."""
  F = torch.nn.functional

  def up(x, f):
    return F.interpolate(F.interpolate(x, scale_factor=f, mode="nearest", recompute_scale_factor=True),
                         scale_factor=1 / f, mode="nearest", recompute_scale_factor=True)

  return lambda x: (x - up(x, 0.5)) * 2.0 / 3.0


def truncated_resnet50(torch, torchvision, front, outputs):
  """NPR's / SAFE's network: `front` then ResNet-50's stem (3x3/2), layer1 and layer2, `outputs` logits."""
  nn, F = torch.nn, torch.nn.functional
  Bottleneck = torchvision.models.resnet.Bottleneck

  def layer(cin, planes, blocks, stride):
    down = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
    return nn.Sequential(Bottleneck(cin, planes, stride, down),
                         *[Bottleneck(planes * 4, planes) for _ in range(blocks - 1)])

  class Truncated(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(64)
      self.layer1, self.layer2 = layer(64, 64, 3, 1), layer(256, 128, 4, 2)
      self.fc1 = nn.Linear(512, outputs)

    def forward(self, x):
      x = F.max_pool2d(F.relu(self.bn1(self.conv1(front(x)))), 3, 2, 1)
      x = self.layer2(self.layer1(x))
      return self.fc1(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

  return Truncated()
