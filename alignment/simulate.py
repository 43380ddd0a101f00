"""`python -m alignment.simulate`: the headless vote -> train -> evaluate loop (see `alignment.eval.simulate`)."""

from alignment.eval.simulate import main

if __name__ == "__main__":
    main()
