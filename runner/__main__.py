"""`python -m runner` is the same as the `recipe` command."""

from runner.cli import main

main()
