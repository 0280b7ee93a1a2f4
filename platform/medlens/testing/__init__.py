"""A kit for plugin authors: contexts, phantom inputs and a contract check for their CI.

Example (in a plugin's own tests)::

    from medlens.testing import check_plugin_contract
    from my_plugin.manifest import MANIFEST

    def test_my_plugin_keeps_the_medlens_contract():
        report = check_plugin_contract(MANIFEST)
        assert report.ok, report.failures

The contexts are the host's own implementation (no mock): ``ctx.segment``,
``ctx.classify`` and ``ctx.explain`` run the real engine, and the weights are
verified against the manifest's sha256 exactly as in the host.
"""

from __future__ import annotations

from medlens.testing._contexts import load_context, run_context
from medlens.testing._contract import ContractReport, check_plugin_contract
from medlens.testing._phantoms import phantom_ct, phantom_for, phantom_xray

__all__ = [
    "ContractReport",
    "check_plugin_contract",
    "load_context",
    "phantom_ct",
    "phantom_for",
    "phantom_xray",
    "run_context",
]
