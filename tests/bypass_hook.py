"""MaxText/train.py with the hooks installed, then a MaxText that no longer calls the patched ``get_optimizer``
(as if it imported it by name): a sparse run must stop with an error naming the extension point, not train dense."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sparsity.maxtext import hook, host, modules  # noqa: E402

argv = host.cpu_defaults(["train.py", *sys.argv[1:]])
run = hook.install()
original = modules.optimizers().get_optimizer._sparsity_original  # MaxText's own get_optimizer (under the hook)
train_utils = modules.train_utils()


def create_training_optimizer(config, model, mesh=None):
  schedule = modules._import("maxtext.utils.maxtext_utils").create_learning_rate_schedule(config)  # pylint: disable=protected-access
  return schedule, original(config, schedule, model, mesh=mesh)


train_utils.create_training_optimizer = create_training_optimizer
from absl import app  # noqa: E402


def main(args):
  """``hook.main`` without installing again (an install checks the extension points, and would see the bypass)."""
  modules.train().main(args)
  run.require("train.train_loop")


app.run(main, argv=argv)
