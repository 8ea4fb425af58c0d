"""Caredeck core: the floor every plugin stands on.

``CORE_API`` is the version of the plugin contract (hooks, ``core.*`` helpers a plugin may
import). A plugin declares the version it targets; a mismatch stops start-up.
"""

__version__ = "0.1.0"
CORE_API = 1
