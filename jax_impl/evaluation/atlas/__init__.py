"""Feature atlas: label every SAE feature with a task concept and test the label causally.

The task's ground truth is known, so instead of eyeballing top activations we score every
feature against a vocabulary of concepts read off the inputs (jax_impl.task.concepts: pointer values, pointed
values, the target, the order of the two pointed values, raw cells, a pointer together with the value
it points at), pick its best label, and then check the label by intervening on the hook's activation:

- ablation: remove the feature's contribution `f_j * d_j` from the activation (the SAE's
  reconstruction error is kept, so only this feature changes) and compare how much the MLP
  output moves on rows where the label's concept holds versus rows where it does not;
- steering: clamp the feature to a typical "on" value on rows where the concept does not hold,
  and measure how far the output follows the target the *task* gives if the concept were true
  (e.g. forcing `p1=2` should turn the output into `|a[2] - b[p2]|`).

Everything is computed on arrays; jax_impl.evaluation.dictionary.Dictionary and jax_impl.models.mlp.Readout hold
the few weights needed, so the analysis can be tested on hand-built models. See docs/atlas.md for the definitions.

  scores        ConceptScores, score_features, best_threshold_f1: features against concepts
  linear_probe  linear_readout_f1, ceilings_by_hook: the best F1 one half-space of a hook reaches (the ceiling)
  effects       CausalEffects, causal_effects, consistency, mean_pointer_swaps: ablation and steering
  document      build_atlas, atlas_from_models, format_summary, feature_labels: feature_atlas.json
The SAE's splice metrics are in jax_impl.evaluation.metrics; the page and the files in jax_impl.reports.atlas_page.
"""
