"""pytest11 entry point: loads the scenario plugin only where the harness's extra is installed.

Every environment that has slotwire installed loads this module when pytest starts, including a
trainer's that has only `pip install slotwire`; importing the plugin there would break its pytest
with an ImportError. With the extra present, the plugin's hooks and fixtures are re-exported here.
"""

from __future__ import annotations

from chaos.extra import missing

if not missing():
    from chaos.pytest_plugin import *  # noqa: F403 (pytest finds hooks and fixtures by name)
