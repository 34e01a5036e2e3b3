"""The kernel's front-end contracts over a Zcache: frontswap and cleancache."""
from .cleancache import Cleancache
from .frontswap import Frontswap

__all__ = ["Cleancache", "Frontswap"]
