"""`python -m finc_cli` runs the CLI (used by torchrun)."""

from finc_cli.cli.main import main

if __name__ == "__main__":
    main()
