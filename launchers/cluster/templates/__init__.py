"""Text templates of the cluster launchers (package data, filled by :mod:`launchers.cluster`)."""
