"""An example specbench plug-in (docs/plugins.md): an optimizer, a model and a dataset that live
outside the suite and are compared with its built-ins under the same loop, budgets and reports.

- :class:`~specbench_example_plugin.optimizer.LayerwiseSpectralNewton` — entry point
  ``layerwise_spectral_newton`` of ``specbench.optimizers``;
- :func:`~specbench_example_plugin.models.mlp` — entry point ``mlp`` of ``specbench.models``;
- :func:`~specbench_example_plugin.data.stripes` — entry point ``stripes`` of ``specbench.datasets``.
"""
