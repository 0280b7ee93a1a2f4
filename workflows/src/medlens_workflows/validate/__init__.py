"""``medlens validate``: locked validation protocols, bias audits and registry gating.

Modules: :mod:`.dataset` (the manifest CSV), :mod:`.store` (durable per-case scores),
:mod:`.scoring` (one case through the host), :mod:`.runner` (the whole run),
:mod:`.report` and :mod:`.html` (outputs), :mod:`.tracking` (MLflow run and registry),
:mod:`.command` (the entry the ``medlens`` CLI calls), :mod:`.phantoms` (phantom datasets).
"""
