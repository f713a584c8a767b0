"""``python -m tunnel``: the command-line launcher."""

from .cli.main import main

if __name__ == "__main__":  # pragma: no branch
    main()
