"""`python -m cli` runs the `mlops` command line (installed as the `mlops` console script)."""

from cli.commands import main

if __name__ == "__main__":
    main()
