"""The RTD-Lite barcode of two distance matrices on the same n points (host, numpy float64).

With A, B the two distance matrices and C = min(A, B) (Tulchinskii et al., AISTATS 2025;
ArGintum/RTD-Lite), the edges of a minimum spanning tree of C, taken by increasing weight,
are the births. A bar of the A-side is born at C-edge (u, v) of weight c and dies at the
smallest weight a for which u and v are joined by the C-edges before it together with the
A-edges of weight <= a (A's minimum spanning tree edges suffice): the minimax A-distance of u
and v once the earlier C-edges are contracted. Bars with death > birth are kept; the B-side
is the same with B. Summing over the C-edges telescopes: the deaths of the A-side sum to
MST(A) and the births to MST(C), so its bar lengths sum to MST(A) - MST(C), and

  rtd_lite(A, B) = 0.5 * (sum of the A-side bars + sum of the B-side bars)

is the loss of enstransfer_jax.losses.rtd_lite_loss.

The deaths are read off a spanning tree kept current as the C-edges are contracted: adding
C-edge (u, v) with weight -inf closes a cycle, the heaviest edge on it is the death and is
removed (the tree stays minimum for the contracted graph). O(n^2) in all.
"""

import numpy as np


def mst_edges(dm):
  """[n - 1, 2] int edges (u < v) of a minimum spanning tree of symmetric dm [n, n] (Prim).

  Ties are broken by the lowest vertex index; edges are returned sorted by weight (stable).
  """
  dm = np.asarray(dm, np.float64)
  n = dm.shape[0]
  if dm.ndim != 2 or dm.shape[1] != n:
    raise ValueError(f'a distance matrix must be square, got shape {dm.shape}')
  best = dm[0].copy()
  parent = np.zeros(n, np.int64)
  done = np.zeros(n, bool)
  done[0] = True
  edges = []
  for _ in range(n - 1):
    v = int(np.argmin(np.where(done, np.inf, best)))
    edges.append((min(v, parent[v]), max(v, parent[v])))
    done[v] = True
    closer = ~done & (dm[v] < best)
    best[closer], parent[closer] = dm[v][closer], v
  edges = np.array(edges, np.int64).reshape(-1, 2)
  return edges[np.argsort(dm[edges[:, 0], edges[:, 1]], kind='stable')]


def _deaths(births, tree, dm):
  """Death of each C-edge in `births` (in order) against the spanning tree `tree` of dm."""
  n = dm.shape[0]
  adj = [dict() for _ in range(n)]
  for u, v in tree:
    adj[u][v] = adj[v][u] = dm[u, v]
  deaths = np.zeros(len(births))
  for i, (u, v) in enumerate(births):
    prev = {u: None}  # path from u to v in the current tree (depth-first)
    stack = [u]
    while stack and v not in prev:
      x = stack.pop()
      for y in adj[x]:
        if y not in prev:
          prev[y] = x
          stack.append(y)
    heavy, x = None, v
    while prev[x] is not None:
      if heavy is None or adj[x][prev[x]] > adj[heavy[0]][heavy[1]]:
        heavy = (x, prev[x])
      x = prev[x]
    deaths[i] = adj[heavy[0]][heavy[1]]
    del adj[heavy[0]][heavy[1]], adj[heavy[1]][heavy[0]]
    adj[u][v] = adj[v][u] = -np.inf
  return deaths


def rtd_lite_barcode(a, b):
  """{'a': bars [m, 2], 'b': bars [m', 2]}: (birth, death) of the RTD-Lite barcode of A and B.

  a, b: symmetric [n, n] distance matrices (already normalised). Each side's bar lengths sum
  to MST(side) - MST(min(a, b)); bars of length 0 are dropped.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 2 or a.shape[0] != a.shape[1]:
    raise ValueError(f'RTD-Lite needs two square distance matrices of one shape, got '
                     f'{a.shape} and {b.shape}')
  c = np.minimum(a, b)
  births = mst_edges(c)
  birth = c[births[:, 0], births[:, 1]]
  out = {}
  for name, dm in (('a', a), ('b', b)):
    death = _deaths(births, mst_edges(dm), dm)
    keep = death > birth
    out[name] = np.stack([birth[keep], death[keep]], axis=1)
  return out


def rtd_lite(a, b):
  """0.5 * (sum of both sides' bar lengths) of the RTD-Lite barcode of distance matrices a, b."""
  bars = rtd_lite_barcode(a, b)
  return 0.5 * float(sum(np.sum(v[:, 1] - v[:, 0]) for v in bars.values()))
