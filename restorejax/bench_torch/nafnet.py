"""NAFNet in PyTorch, written here after the official `NAFNet_arch.py` (megvii-research/NAFNet): the same
modules, parameter names (so `restorejax.convert.nafnet` reads its state dict) and the official
LayerNorm2d with its hand-written backward. NCHW, as the official code runs.

`train_step(model, opt, ...)` is the official training step that a benchmark compares against: forward,
L1, backward, global-norm clipping, AdamW, and the same parameter EMA restorejax keeps.
"""

import torch
from torch import nn
import torch.nn.functional as F


class LayerNormFunction(torch.autograd.Function):
  """Channel LayerNorm of NCHW tensors with the official closed-form backward."""

  @staticmethod
  def forward(ctx, x, weight, bias, eps):
    ctx.eps = eps
    mu = x.mean(1, keepdim=True)
    var = (x - mu).pow(2).mean(1, keepdim=True)
    y = (x - mu) / (var + eps).sqrt()
    ctx.save_for_backward(y, var, weight)
    return weight.view(1, -1, 1, 1) * y + bias.view(1, -1, 1, 1)

  @staticmethod
  def backward(ctx, grad_output):
    y, var, weight = ctx.saved_tensors
    g = grad_output * weight.view(1, -1, 1, 1)
    mean_g = g.mean(dim=1, keepdim=True)
    mean_gy = (g * y).mean(dim=1, keepdim=True)
    gx = 1.0 / torch.sqrt(var + ctx.eps) * (g - y * mean_gy - mean_g)
    return gx, (grad_output * y).sum(dim=(0, 2, 3)), grad_output.sum(dim=(0, 2, 3)), None


class LayerNorm2d(nn.Module):

  def __init__(self, channels, eps=1e-6):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(channels))
    self.bias = nn.Parameter(torch.zeros(channels))
    self.eps = eps

  def forward(self, x):
    return LayerNormFunction.apply(x, self.weight, self.bias, self.eps)


class SimpleGate(nn.Module):

  def forward(self, x):
    x1, x2 = x.chunk(2, dim=1)
    return x1 * x2


class NAFBlock(nn.Module):

  def __init__(self, c, dw_expand=2, ffn_expand=2):
    super().__init__()
    dw = c * dw_expand
    self.conv1 = nn.Conv2d(c, dw, 1)
    self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
    self.conv3 = nn.Conv2d(dw // 2, c, 1)
    self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1))
    self.sg = SimpleGate()
    ffn = ffn_expand * c
    self.conv4 = nn.Conv2d(c, ffn, 1)
    self.conv5 = nn.Conv2d(ffn // 2, c, 1)
    self.norm1 = LayerNorm2d(c)
    self.norm2 = LayerNorm2d(c)
    self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))
    self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))

  def forward(self, inp):
    x = self.conv2(self.conv1(self.norm1(inp)))
    x = self.sg(x)
    x = x * self.sca(x)
    y = inp + self.conv3(x) * self.beta
    x = self.conv5(self.sg(self.conv4(self.norm2(y))))
    return y + x * self.gamma


class NAFNet(nn.Module):
  """`NAFNet(img_channel, width, enc_blk_nums, middle_blk_num, dec_blk_nums)`, as the official class."""

  def __init__(self, img_channel=3, width=16, middle_blk_num=1, enc_blk_nums=(), dec_blk_nums=()):
    super().__init__()
    self.intro = nn.Conv2d(img_channel, width, 3, padding=1)
    self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
    self.encoders, self.decoders = nn.ModuleList(), nn.ModuleList()
    self.ups, self.downs = nn.ModuleList(), nn.ModuleList()
    chan = width
    for num in enc_blk_nums:
      self.encoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
      self.downs.append(nn.Conv2d(chan, 2 * chan, 2, 2))
      chan *= 2
    self.middle_blks = nn.Sequential(*[NAFBlock(chan) for _ in range(middle_blk_num)])
    for num in dec_blk_nums:
      self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False), nn.PixelShuffle(2)))
      chan //= 2
      self.decoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
    self.padder_size = 2 ** len(self.encoders)

  def forward(self, inp):
    _, _, h, w = inp.shape
    inp = F.pad(inp, (0, -w % self.padder_size, 0, -h % self.padder_size))
    x = self.intro(inp)
    skips = []
    for encoder, down in zip(self.encoders, self.downs):
      x = encoder(x)
      skips.append(x)
      x = down(x)
    x = self.middle_blks(x)
    for decoder, up, skip in zip(self.decoders, self.ups, skips[::-1]):
      x = decoder(up(x) + skip)
    x = self.ending(x) + inp
    return x[:, :, :h, :w]


def from_config(model_cfg) -> NAFNet:
  """The official class with the fields of a restorejax `config.model` block for NAFNet."""
  if model_cfg.get("fusion", "none") != "none" or model_cfg.get("tlsc_size", 0):
    raise ValueError("the PyTorch NAFNet port has no prior fusion and no TLSC")
  return NAFNet(img_channel=model_cfg.channels, width=model_cfg.width, middle_blk_num=model_cfg.middle_blocks,
                enc_blk_nums=tuple(model_cfg.enc_blocks), dec_blk_nums=tuple(model_cfg.dec_blocks))


class Trainer:
  """The official step (forward, L1, backward, clip, AdamW) plus restorejax's parameter EMA."""

  def __init__(self, model: nn.Module, optim_cfg, ema: bool = True):
    self.model = model
    self.params = [p for p in model.parameters() if p.requires_grad]
    self.opt = torch.optim.AdamW(self.params, lr=optim_cfg.lr, betas=(optim_cfg.b1, optim_cfg.b2),
                                 eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay)
    self.clip = optim_cfg.grad_clip_norm
    self.decay = optim_cfg.ema_decay
    self.ema = [p.detach().clone() for p in self.params] if ema else None

  def step(self, degraded: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    self.opt.zero_grad(set_to_none=True)
    loss = F.l1_loss(self.model(degraded), target)
    loss.backward()
    if self.clip > 0:
      torch.nn.utils.clip_grad_norm_(self.params, self.clip)
    self.opt.step()
    if self.ema is not None:
      with torch.no_grad():
        torch._foreach_lerp_(self.ema, self.params, 1.0 - self.decay)  # pylint: disable=protected-access
    return loss.detach()
