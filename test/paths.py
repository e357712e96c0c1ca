"""Where the tests find the source tree, wherever their own file sits under test/."""

from pathlib import Path

TEST_DIR = Path(__file__).resolve().parent
REPO = TEST_DIR.parent
