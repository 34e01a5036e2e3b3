"""ramster: transcendent memory in userspace (zcache2 + zbud + RAMster)."""
PAGE_SIZE = 4096
__version__ = "0.1.0"
