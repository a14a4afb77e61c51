"""Step implementations, one module per recipe section; importing this package registers them all.

Modules import heavy libraries inside their functions, so this import stays cheap.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
