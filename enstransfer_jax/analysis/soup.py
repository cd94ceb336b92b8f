"""The uniform model soup (Wortsman et al., 2022): members' parameters averaged.

  soup = mean_i params_i, with BatchNorm statistics recomputed on training data
(Evaluator.recompute_bn): averaging running statistics of different members is not the
statistics of the averaged network. A Swin (LayerNorm only, empty batch_stats) has nothing
to recompute: its soup is the averaged parameters alone.
"""

from enstransfer_jax.analysis.evaluate import combine


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

