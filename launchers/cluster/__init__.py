"""Launch a specbench sweep on a cluster: generated SLURM batch scripts and KubeRay manifests.

Nothing here submits anything or runs code from a template: each renderer validates its
arguments (``ValueError`` with a readable message), fills a text template shipped as package data
(``templates/``) with :class:`string.Template` — delimiter ``@@`` instead of ``$``, so the shell
and YAML text stays literal — and returns the text for the user to review and submit
(``sbatch job.sh``, ``kubectl apply -f sweep.yaml``).

In both cases the sweep itself is the ordinary ``specbench sweep CONFIG --address ...``: it
validates the config against the cluster's resources, skips finished trials and resumes
interrupted ones, so re-submitting a job resumes its sweep.
"""

from __future__ import annotations

import string
from importlib import resources

from launchers.cluster.kuberay import render_rayjob
from launchers.cluster.slurm import render_sbatch

__all__ = ["load_template", "render_rayjob", "render_sbatch"]


class _Template(string.Template):
    # "$" is everywhere in shell scripts; "@@" appears in neither bash nor Kubernetes YAML.
    delimiter = "@@"


def load_template(name: str) -> _Template:
    """A template from ``launchers/cluster/templates/`` (package data)."""
    text = resources.files("launchers.cluster.templates").joinpath(name).read_text(encoding="utf-8")
    return _Template(text)
