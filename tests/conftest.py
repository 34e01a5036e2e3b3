import sys
from pathlib import Path

# tests/pages.py is shared by every test directory
sys.path.insert(0, str(Path(__file__).resolve().parent))
