"""``python -m simulators.demo_town [--out FILE] [--seed N]``: write the demo town."""

from simulators.demo_town.document import main

main()
