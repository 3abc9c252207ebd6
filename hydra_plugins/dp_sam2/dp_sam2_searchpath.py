"""Adds dp_sam2's Hydra configs to every Hydra app in the environment.

Hydra imports the modules under the ``hydra_plugins`` namespace at startup and calls every
:class:`SearchPathPlugin` it finds. Appending ``pkg://dp_sam2.configs`` makes the ``obs_encoder``
group (``sam2_tiny`` ... ``sam2.1_large``) and the ready Diffusion Policy workspace yamls visible
to DP's unchanged ``train.py``. Appended, not prepended: the app's own configs win on name clashes.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

PROVIDER = "dp_sam2"
PATH = "pkg://dp_sam2.configs"


class DpSam2SearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if not any(entry.path == PATH for entry in search_path.get_path()):
            search_path.append(provider=PROVIDER, path=PATH)
