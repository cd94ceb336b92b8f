"""A PyTorch Swin Transformer with Microsoft's module names and buffers, for parity tests.

Written from the Swin paper (Liu et al. 2021) and the facts of Microsoft's
swin_transformer.py that fix the state dict and the numbers: token maps kept as
(B, L, C); W-MSA with a (2w-1)^2 x heads relative_position_bias_table indexed by a
registered relative_position_index buffer; odd blocks roll by -w//2 and register an
attn_mask buffer (-100 between regions, 0 within); the window shrinks to the map (and
the shift to 0) when the map is no larger than it; PatchMerging takes the 2x2
neighbours in the order (0,0), (1,0), (0,1), (1,1), then norm, then a bias-free
reduction; DropPath per sample, scaled by 1/keep; a final LayerNorm, mean over tokens
and head. forward(x) takes NCHW images and returns (logits, features): features[i] is
the output of layers[i] as (B, H, W, C), None for stages the model lacks, then the
pooled vector, the five slots of the Flax model.
"""

import torch
from torch import nn


class DropPath(nn.Module):

  def __init__(self, rate):
    super().__init__()
    self.rate = rate

  def forward(self, x):
    if not self.training or self.rate == 0:
      return x
    keep = 1 - self.rate
    mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype).bernoulli_(keep)
    return x * mask / keep


class Mlp(nn.Module):

  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


def _windows(x, w):
  """(B, H, W, C) -> (B * nW, w*w, C)."""
  b, h, wd, c = x.shape
  x = x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, w * w, c)


def _unwindows(x, w, h, wd):
  c = x.shape[-1]
  b = x.shape[0] // ((h // w) * (wd // w))
  x = x.view(b, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, wd, c)


class WindowAttention(nn.Module):

  def __init__(self, dim, window, heads):
    super().__init__()
    self.window, self.heads = window, heads
    self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1)**2, heads))
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing='ij')
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    self.register_buffer('relative_position_index', dy * (2 * window - 1) + dx)
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)
    nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

  def forward(self, x, mask):
    bw, n, c = x.shape
    qkv = self.qkv(x).view(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scores = (q * (c // self.heads)**-0.5) @ k.transpose(-1, -2)
    bias = self.relative_position_bias_table[self.relative_position_index.flatten()]
    scores = scores + bias.view(n, n, self.heads).permute(2, 0, 1)[None]
    if mask is not None:
      nw = mask.shape[0]
      scores = (scores.view(bw // nw, nw, self.heads, n, n) + mask[None, :, None])
      scores = scores.view(bw, self.heads, n, n)
    out = scores.softmax(-1) @ v
    return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class Block(nn.Module):

  def __init__(self, dim, res, heads, window, shift, drop_path, mlp_ratio=4.0):
    super().__init__()
    if res <= window:
      window, shift = res, 0
    self.res, self.window, self.shift = res, window, shift
    self.norm1 = nn.LayerNorm(dim)
    self.attn = WindowAttention(dim, window, heads)
    self.drop_path = DropPath(drop_path)
    self.norm2 = nn.LayerNorm(dim)
    self.mlp = Mlp(dim, int(dim * mlp_ratio))
    mask = None
    if shift:
      region = torch.zeros(1, res, res, 1)
      cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
      for i, (a, b) in enumerate((a, b) for a in cuts for b in cuts):
        region[:, a, b, :] = i
      ids = _windows(region, window).squeeze(-1)  # nW, w*w
      mask = (ids[:, None, :] != ids[:, :, None]).float() * -100.0
    self.register_buffer('attn_mask', mask)

  def forward(self, x):
    b, l, c = x.shape
    r, w, s = self.res, self.window, self.shift
    y = self.norm1(x).view(b, r, r, c)
    if s:
      y = torch.roll(y, (-s, -s), (1, 2))
    y = _unwindows(self.attn(_windows(y, w), self.attn_mask), w, r, r)
    if s:
      y = torch.roll(y, (s, s), (1, 2))
    x = x + self.drop_path(y.reshape(b, l, c))
    return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):

  def __init__(self, res, dim):
    super().__init__()
    self.res = res
    self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
    self.norm = nn.LayerNorm(4 * dim)

  def forward(self, x):
    b, _, c = x.shape
    x = x.view(b, self.res, self.res, c)
    x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class Stage(nn.Module):

  def __init__(self, dim, res, depth, heads, window, rates, merge):
    super().__init__()
    self.blocks = nn.ModuleList([
        Block(dim, res, heads, window, window // 2 if j % 2 else 0, rates[j])
        for j in range(depth)])
    self.downsample = PatchMerging(res, dim) if merge else None

  def forward(self, x):
    for blk in self.blocks:
      x = blk(x)
    return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):

  def __init__(self, patch, dim):
    super().__init__()
    self.proj = nn.Conv2d(3, dim, patch, patch)
    self.norm = nn.LayerNorm(dim)

  def forward(self, x):
    return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class TorchSwin(nn.Module):
  """Swin with Microsoft's state-dict keys; defaults are Swin-Tiny at 224 px."""

  def __init__(self, num_classes=1000, embed_dim=96, depths=(2, 2, 6, 2),
               num_heads=(3, 6, 12, 24), window_size=7, patch_size=4, image_size=224,
               drop_path_rate=0.1):
    super().__init__()
    self.patch_embed = PatchEmbed(patch_size, embed_dim)
    rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
    res = image_size // patch_size
    self.layers = nn.ModuleList()
    for i, depth in enumerate(depths):
      start = sum(depths[:i])
      self.layers.append(Stage(embed_dim * 2**i, res // 2**i, depth, num_heads[i],
                               window_size, rates[start:start + depth], i < len(depths) - 1))
    dim = embed_dim * 2**(len(depths) - 1)
    self.norm = nn.LayerNorm(dim)
    self.head = nn.Linear(dim, num_classes)

  def forward(self, x):
    x = self.patch_embed(x)
    feats = []
    for layer in self.layers:
      x = layer(x)
      r = int(round(x.shape[1]**0.5))
      feats.append(x.view(x.shape[0], r, r, -1))
    feats += [None] * (4 - len(feats))
    pooled = self.norm(x).mean(1)
    return self.head(pooled), feats + [pooled]


def randomize_(model, seed=0):
  """Every parameter random (LayerNorm scales around 1) so that no term is trivially zero."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1 and ('norm' in name) and name.endswith('weight'):
        p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
      elif 'relative_position_bias_table' in name:
        p.copy_(torch.randn(p.shape, generator=g))
      elif p.ndim >= 2:  # Linear / conv weights: unit gain, so that GELU sees O(1) inputs
        p.copy_(torch.randn(p.shape, generator=g) / p[0].numel()**0.5)
      else:
        p.copy_(0.1 * torch.randn(p.shape, generator=g))
  return model
