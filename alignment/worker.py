"""`python -m alignment.worker`: the training worker as its own process (see `alignment.training.worker`)."""

from alignment.training.worker import main

if __name__ == "__main__":
    main()
