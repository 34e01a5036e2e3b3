"""ramster: transcendent memory in userspace (zcache2 + zbud + RAMster).

    import ramster
    zc = ramster.Zcache(max_pageframes=1024)
    pid = zc.new_pool(persistent=True)
    zc.put_page(pid, oid=1, index=0, page=b"x" * ramster.PAGE_SIZE)
"""
from .frontends import Cleancache, Frontswap
from .units import PAGE_SIZE
from .zcache import ON_PEER, TmemError, Zcache

__version__ = "0.1.0"
__all__ = ["ON_PEER", "PAGE_SIZE", "Cleancache", "Frontswap", "TmemError", "Zcache", "__version__"]
