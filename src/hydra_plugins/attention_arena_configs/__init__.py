"""Hydra search-path plugin: config groups shipped by other packages join attention-arena's.

A package that adds backends, data sets or experiments declares where its config groups live::

    [project.entry-points."attention_arena.configs"]
    my_pkg = "my_pkg.conf"        # my_pkg/conf/attention/my_attention.yaml, experiment/..., ...

Every Hydra app whose primary configs are attention-arena's (``arena-train``, the baseline) then
finds ``attention=my_attention`` there. Other Hydra apps are left alone. For a plain folder,
use Hydra's own ``--config-dir DIR`` (or ``hydra.searchpath=[file://DIR]``) instead.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

ENTRY_POINT_GROUP = "attention_arena.configs"


class AttentionArenaConfigs(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        ours = any("attention_arena" in str(p.path).replace("/", ".")
                   for p in search_path.get_path() if p.provider == "main")
        if not ours:
            return
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            search_path.append(provider=f"attention_arena.configs:{ep.name}",
                               path=f"pkg://{ep.value}")
