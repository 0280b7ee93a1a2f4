"""The plugin protocol: a factory builds a plugin once; ``predict`` runs per input."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from medlens.imaging.image import Image
from medlens.plugin_api._results import Prediction, Result
from medlens.plugin_api._study import StudyInput

if TYPE_CHECKING:
    from medlens.plugin_api._context import LoadContext, RunContext

__all__ = ["Plugin", "PluginFactory", "PluginInputs"]


@dataclass(frozen=True)
class PluginInputs:
    """What a plugin is given.

    Attributes:
        image: The input image (as read, on its original grid).
        mask: A label map on ``image``'s grid, for plugins that consume masks.
        upstream: The result of the plugin this one is chained after, if any.
        study: All images of the study, with their facts, for study plugins (API 1.1);
            ``image`` is then the first of them.
    """

    image: Image
    mask: Image | None = None
    upstream: Result | None = None
    study: StudyInput | None = None


@runtime_checkable
class Plugin(Protocol):
    """A loaded plugin. Built once by its factory, then called for every input.

    ``predict`` must be pure with respect to its inputs: no global state, no
    writing files (the host writes outputs), and errors raised as
    ``MedLensError`` subclasses with one-line reasons.
    """

    def predict(self, inputs: PluginInputs, ctx: RunContext) -> Prediction:
        """Run the model on ``inputs`` and return a prediction on the input's grid."""
        ...


#: What a manifest's ``entry`` names: called once with a :class:`LoadContext`.
PluginFactory = Callable[["LoadContext"], Plugin]
