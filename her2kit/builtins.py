"""The built-in plugins, registered through the same hooks as third-party ones."""

from her2kit.models import plugin as models_plugin
from her2kit.preprocess import plugin as preprocess_plugin
from her2kit.readers import plugin as readers_plugin
from her2kit.scoring import plugin as scoring_plugin

MODULES = (readers_plugin, preprocess_plugin, models_plugin, scoring_plugin)
