"""`python -m pixmill` runs the pixmill command."""

from pixmill.cli.main import main

if __name__ == "__main__":
    main()
