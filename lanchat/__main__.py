"""python -m lanchat"""

from lanchat.cli import main

main()
