"""The uniform model soup (Wortsman et al., 2022): members' parameters averaged.

  soup = mean_i params_i, with BatchNorm statistics recomputed on training data
(Evaluator.recompute_bn): averaging running statistics of different members is not the
statistics of the averaged network. A Swin (LayerNorm only, empty batch_stats) has nothing
to recompute: its soup is the averaged parameters alone.

The greedy soup (Wortsman et al., 2022, Recipe 1): the members sorted by held-out score,
best first; the soup starts as the best member and each next member joins when the uniform
soup of the chosen members and it scores at least as well on the held-out data as the soup
without it (ties join, as in the paper's ">="). Every candidate is scored as the uniform soup
is (BN statistics recomputed); the start too, so all scores compare like with like.
"""

from enstransfer_jax.evaluator import combine


def uniform_soup(member_variables):
  """{'params': mean of the members' params, 'batch_stats': their mean (recompute these)}."""
  if not member_variables:
    raise ValueError('the soup needs at least one member')
  k = len(member_variables)
  params = combine([v['params'] for v in member_variables], [1.0 / k] * k)
  stats = combine([v['batch_stats'] for v in member_variables], [1.0 / k] * k)
  return {'params': params, 'batch_stats': stats}


def soup_probs(evaluator, member_variables, bn_images, test_images):
  """Test probabilities of the uniform soup, its BN statistics recomputed on `bn_images`."""
  soup = evaluator.recompute_bn(uniform_soup(member_variables), bn_images)
  return evaluator.probs(soup, test_images)



def greedy_soup(member_variables, held_out_score, member_scores=None):
  """(chosen member indices (0-based, in the order they joined), steps) of the greedy soup.

  held_out_score(variables) -> float scores a soup (its BN statistics recomputed by the
  caller's function); member_scores (default: held_out_score of each member alone) sets the
  order. steps: one dict per member tried, in order:
  {'member', 'score' (of the soup with it), 'added'}.
  """
  if not member_variables:
    raise ValueError('the soup needs at least one member')
  if member_scores is None:
    member_scores = [held_out_score(v) for v in member_variables]
  order = sorted(range(len(member_variables)), key=lambda i: -member_scores[i])  # stable
  chosen = [order[0]]
  best = held_out_score(uniform_soup([member_variables[order[0]]]))
  steps = [{'member': order[0], 'score': best, 'added': True}]
  for i in order[1:]:
    score = held_out_score(uniform_soup([member_variables[j] for j in chosen + [i]]))
    added = score >= best
    steps.append({'member': i, 'score': score, 'added': added})
    if added:
      chosen, best = chosen + [i], score
  return chosen, steps
